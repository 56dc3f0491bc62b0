"""One settings module for every environment: development, production and test differ only by env.

Every value comes from an environment variable (12-factor). A missing or malformed variable stops
start-up with an error that names it. Variables are documented in `.env.example` and
`.env.prod.example`.
"""

import ipaddress
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from environs import Env, EnvError
from marshmallow.validate import OneOf, Range

from core.error_reporting import init_sentry, mail_admins_on_errors
from core.logging_config import FORMATS, default_format, logging_config

BASE_DIR = Path(__file__).resolve().parent.parent  # app/
REPO_DIR = BASE_DIR.parent

env = Env(expand_vars=True)


def _fail(variable: str, reason: str) -> None:
    raise ImproperlyConfigured(f"{variable}: {reason}")


# Secrets as files (Swarm and Kubernetes secrets): VAR_FILE names a file holding VAR. Read here,
# so that every Python process has them, `docker exec` ones included; the same list as
# deployments/compose/file-env, which does this for the shell scripts (a test compares them).
SECRET_VARIABLES = (
    "SECRET_KEY",
    "DATABASE_URL",
    "DATABASE_DIRECT_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "CACHE_URL",
    "DIAGNOSTICS_TOKEN",
    "FLOWER_BASIC_AUTH",
    "EMAIL_URL",
    "SENTRY_DSN",
    "POSTGRES_PASSWORD",
    "APP_DB_PASSWORD",
    "PGBOUNCER_ADMIN_PASSWORD",
    "REDIS_BROKER_PASSWORD",
    "REDIS_CACHE_PASSWORD",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
)


def read_secret_files(environ: MutableMapping[str, str] = os.environ) -> None:
    for name in SECRET_VARIABLES:
        path = environ.get(f"{name}_FILE")
        if path and not environ.get(name):
            try:
                environ[name] = Path(path).read_text().rstrip("\n")
            except OSError as exc:
                _fail(f"{name}_FILE", f"cannot read {path} ({exc.strerror})")


read_secret_files()


try:
    DJANGO_ENV = env.str(
        "DJANGO_ENV", "development", validate=OneOf(["development", "production", "test"])
    )
    PRODUCTION = DJANGO_ENV == "production"
    DEBUG = env.bool("DEBUG", default=not PRODUCTION)
    SECRET_KEY = env.str("SECRET_KEY", "" if PRODUCTION else "insecure-development-key")
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", [] if PRODUCTION else ["localhost", "127.0.0.1"])
    CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", [])

    DATABASES = {"default": env.dj_db_url("DATABASE_URL")}
    # Transaction pooling (PgBouncer) cannot keep WITH HOLD cursors across transactions.
    DATABASE_BEHIND_PGBOUNCER = env.bool("DATABASE_BEHIND_PGBOUNCER", True)
    # Per-process psycopg pool size; 0 disables the pool (Celery prefork workers, see celery#10554).
    DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", 4, validate=Range(min=0))
    DATABASE_POOL_TIMEOUT = env.float("DATABASE_POOL_TIMEOUT", 10.0)
    DATABASE_CONNECT_TIMEOUT = env.int("DATABASE_CONNECT_TIMEOUT", 5)
    DATABASE_CONN_MAX_AGE = env.int("DATABASE_CONN_MAX_AGE", 0)

    CACHE_URL = env.str("CACHE_URL")
    CELERY_BROKER_URL = env.str("CELERY_BROKER_URL")
    CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)

    STATIC_ROOT = env.path("STATIC_ROOT", REPO_DIR / "assets" / "staticfiles")
    MEDIA_ROOT = env.path("MEDIA_ROOT", REPO_DIR / "assets" / "media")
    # filesystem: jobs' files in MEDIA_ROOT, shared by web, workers and nginx; s3: in a bucket of
    # an S3-compatible store (web and workers on different hosts), MEDIA_ROOT their scratch.
    MEDIA_STORAGE = env.str("MEDIA_STORAGE", "filesystem", validate=OneOf(["filesystem", "s3"]))
    S3_BUCKET = env.str("S3_BUCKET", "")
    S3_ENDPOINT_URL = env.str("S3_ENDPOINT_URL", "")  # empty: AWS's own
    S3_REGION = env.str("S3_REGION", "us-east-1")
    S3_ACCESS_KEY_ID = env.str("S3_ACCESS_KEY_ID", "")
    S3_SECRET_ACCESS_KEY = env.str("S3_SECRET_ACCESS_KEY", "")
    # How long a download link (a redirect to a signed URL) works.
    S3_URL_EXPIRE_S = env.int("S3_URL_EXPIRE_S", 300, validate=Range(min=10, max=86400))
    if MEDIA_STORAGE == "s3" and not S3_BUCKET:
        _fail("S3_BUCKET", "is required with MEDIA_STORAGE=s3")
    UPLOAD_MAX_MB = env.int("UPLOAD_MAX_MB", 200, validate=Range(min=1, max=4096))

    DIAGNOSTICS_TOKEN = env.str("DIAGNOSTICS_TOKEN", "")
    # Errors: Sentry when SENTRY_DSN is set, else mail to ADMINS (a list of addresses) if any.
    SENTRY_DSN = env.str("SENTRY_DSN", "")
    SENTRY_ENVIRONMENT = env.str("SENTRY_ENVIRONMENT", DJANGO_ENV)
    SENTRY_RELEASE = env.str("SENTRY_RELEASE", "")  # e.g. the deployed commit
    SENTRY_TRACES_SAMPLE_RATE = env.float(
        "SENTRY_TRACES_SAMPLE_RATE", 0.0, validate=Range(min=0.0, max=1.0)
    )
    ADMINS: list[str] = env.list("ADMINS", [])
    # The worker's Prometheus endpoint (its main process serves what every pool process counted);
    # 0 turns it off. web and events serve /metrics on their own port (README, "Metrics").
    WORKER_METRICS_PORT = env.int("WORKER_METRICS_PORT", 9808, validate=Range(min=0, max=65535))
    WORKER_METRICS_BIND = env.str("WORKER_METRICS_BIND", "0.0.0.0")  # noqa: S104 - in a container
    # Client networks whose /readyz answers show each component's latency and error.
    # Strings here; parsed into ip_network objects below.
    READYZ_DETAIL_FROM: list[Any] = env.list(
        "READYZ_DETAIL_FROM",
        ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
    )
    SITE_URL = env.str("SITE_URL", "https://localhost:8443")

    AUDIO_MAX_DURATION_S = env.int("AUDIO_MAX_DURATION_S", 3 * 3600, validate=Range(min=1))
    AUDIO_MAX_SAMPLE_RATE = env.int("AUDIO_MAX_SAMPLE_RATE", 192_000, validate=Range(min=8000))
    AUDIO_MAX_CHANNELS = env.int("AUDIO_MAX_CHANNELS", 8, validate=Range(min=1, max=8))
    AUDIO_RETENTION_DAYS = env.int("AUDIO_RETENTION_DAYS", 30, validate=Range(min=1))
    # A running job's worker records a heartbeat every AUDIO_HEARTBEAT_S; a run silent for
    # AUDIO_HEARTBEAT_TIMEOUT_S is taken over (README, "Job state machine").
    AUDIO_HEARTBEAT_S = env.float("AUDIO_HEARTBEAT_S", 5.0, validate=Range(min=0.5))
    AUDIO_HEARTBEAT_TIMEOUT_S = env.int("AUDIO_HEARTBEAT_TIMEOUT_S", 30, validate=Range(min=5))
    AUDIO_QUEUED_GRACE_S = env.int("AUDIO_QUEUED_GRACE_S", 120, validate=Range(min=10))
    AUDIO_MAX_ATTEMPTS = env.int("AUDIO_MAX_ATTEMPTS", 3, validate=Range(min=1))
    AUDIO_MAX_ACTIVE_JOBS = env.int("AUDIO_MAX_ACTIVE_JOBS", 5, validate=Range(min=1))
    # Each encoder (ffmpeg) runs under rlimits: address space, CPU seconds, largest file written
    # (a rendition); the worker's own processes (PyAV decoding) under an address-space limit.
    AUDIO_ENCODER_MEMORY_MB = env.int("AUDIO_ENCODER_MEMORY_MB", 1024, validate=Range(min=64))
    AUDIO_ENCODER_CPU_S = env.int("AUDIO_ENCODER_CPU_S", 600, validate=Range(min=1))
    AUDIO_MAX_OUTPUT_MB = env.int("AUDIO_MAX_OUTPUT_MB", 2048, validate=Range(min=1))
    AUDIO_WORKER_MEMORY_MB = env.int("AUDIO_WORKER_MEMORY_MB", 2048, validate=Range(min=256))
    AUDIO_USER_QUOTA_MB = env.int("AUDIO_USER_QUOTA_MB", 2048, validate=Range(min=1))
    UPLOAD_RATE = env.str("UPLOAD_RATE", "30/hour")
    JOB_ACTION_RATE = env.str("JOB_ACTION_RATE", "30/minute")
    # Live event streams (/jobs/events/): caps per user (all processes) and per web process.
    SSE_MAX_STREAMS_PER_USER = env.int("SSE_MAX_STREAMS_PER_USER", 10, validate=Range(min=1))
    SSE_MAX_STREAMS_PER_PROCESS = env.int("SSE_MAX_STREAMS_PER_PROCESS", 500, validate=Range(min=1))
    SSE_KEEPALIVE_S = env.int("SSE_KEEPALIVE_S", 15, validate=Range(min=1))
    SSE_STREAM_SECONDS = env.int("SSE_STREAM_SECONDS", 300, validate=Range(min=10))
    LOGIN_RATE = env.str("LOGIN_RATE", "10/minute")
    # Accounts created per client address, and by everyone together (a flood from many
    # addresses); new links for email verification per user.
    SIGNUP_RATE = env.str("SIGNUP_RATE", "10/hour")
    SIGNUP_GLOBAL_RATE = env.str("SIGNUP_GLOBAL_RATE", "500/hour")
    VERIFICATION_RESEND_RATE = env.str("VERIFICATION_RESEND_RATE", "5/hour")
    EMAIL_VERIFY_MAX_AGE_S = env.int("EMAIL_VERIFY_MAX_AGE_S", 3 * 86400, validate=Range(min=60))

    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", PRODUCTION)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", 63072000 if PRODUCTION else 0)

    CELERY_WORKER_CONCURRENCY = env.int("CELERY_WORKER_CONCURRENCY", None)
    # A replaced child stalls the task behind it for up to seconds (benchmarks/task_latency.py:
    # p99 131 ms, max 4.4 s at 100): rarely by count; the memory cap catches a bloated one.
    CELERY_WORKER_MAX_TASKS_PER_CHILD = env.int("CELERY_MAX_TASKS_PER_CHILD", 1000)
    CELERY_WORKER_MAX_MEMORY_PER_CHILD = env.int("CELERY_MAX_MEMORY_PER_CHILD_KB", 512_000)
    CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", 600)
    CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", 660)

    EMAIL_URL = env.str("EMAIL_URL", "console://" if not PRODUCTION else "smtp://localhost:25")
    DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", "noreply@localhost")
    LOG_LEVEL = env.log_level("LOG_LEVEL", "INFO")  # type: ignore[call-overload]  # names work too
    LOG_FORMAT = env.str("LOG_FORMAT", default_format(DJANGO_ENV), validate=OneOf(FORMATS))
except EnvError as exc:
    raise ImproperlyConfigured(f"Environment: {exc}") from exc

if PRODUCTION:
    if DEBUG:
        _fail("DEBUG", "must be off when DJANGO_ENV=production")
    if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("django-insecure"):
        _fail("SECRET_KEY", "must be a random string of at least 50 characters in production")
    if not ALLOWED_HOSTS:
        _fail("ALLOWED_HOSTS", "must list the site's host names in production")
try:
    READYZ_DETAIL_FROM = [ipaddress.ip_network(net) for net in READYZ_DETAIL_FROM]
except ValueError as exc:
    _fail("READYZ_DETAIL_FROM", f"must list networks such as 10.0.0.0/8 ({exc})")
if CELERY_TASK_SOFT_TIME_LIMIT >= CELERY_TASK_TIME_LIMIT:
    _fail("CELERY_TASK_SOFT_TIME_LIMIT", "must be lower than CELERY_TASK_TIME_LIMIT")
if AUDIO_HEARTBEAT_TIMEOUT_S < 3 * AUDIO_HEARTBEAT_S:
    _fail("AUDIO_HEARTBEAT_TIMEOUT_S", "must be at least 3 x AUDIO_HEARTBEAT_S")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "core",
    "health",
    "accounts",
    "audio",
]

MIDDLEWARE = [
    # Request count and latency by view, method and status (README, "Metrics"): first and last.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "core.log_context.RequestIdMiddleware",
    "health.middleware.HealthCheckMiddleware",
    "core.middleware.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.log_context.UserIdMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "core.urls"
ASGI_APPLICATION = "core.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: the app talks to PgBouncer (transaction mode); see README, "Database connections".
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.postgresql":  # the same backend, counting its queries
    _db["ENGINE"] = "django_prometheus.db.backends.postgresql"
_db["CONN_MAX_AGE"] = DATABASE_CONN_MAX_AGE
# With the pool this is psycopg_pool's check on checkout: a connection broken by a PgBouncer or
# PostgreSQL restart is replaced, never handed to a request.
_db["CONN_HEALTH_CHECKS"] = DATABASE_CONN_MAX_AGE > 0 or DATABASE_POOL_MAX_SIZE > 0
_db["DISABLE_SERVER_SIDE_CURSORS"] = DATABASE_BEHIND_PGBOUNCER
_db.setdefault("OPTIONS", {})
_db["OPTIONS"]["connect_timeout"] = DATABASE_CONNECT_TIMEOUT
_db["OPTIONS"]["application_name"] = env.str("DATABASE_APPLICATION_NAME", "django")
if DATABASE_POOL_MAX_SIZE:
    if DATABASE_CONN_MAX_AGE:
        _fail("DATABASE_CONN_MAX_AGE", "must be 0 when DATABASE_POOL_MAX_SIZE enables the pool")
    _db["OPTIONS"]["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_MAX_SIZE,
        "timeout": DATABASE_POOL_TIMEOUT,
        # Recycle server connections before PgBouncer's server_idle_timeout would.
        "max_idle": 300,
        "max_lifetime": 1800,
    }
_db["TEST"] = {"NAME": env.str("DATABASE_TEST_NAME", f"test_{_db['NAME']}")}

CACHES = {
    "default": {
        "BACKEND": "core.cache.ReusedClientRedisCache",
        "LOCATION": CACHE_URL,
        "KEY_PREFIX": "core",
        "TIMEOUT": 300,
        "OPTIONS": {"socket_connect_timeout": 1.0, "socket_timeout": 1.0},
    }
}

SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
# django-prometheus would read the migration table at start-up: a start must not need the database.
PROMETHEUS_EXPORT_MIGRATIONS = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
MEDIA_URL = "/media/"
MEDIA_STORE = {
    "filesystem": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "s3": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": S3_BUCKET,
            "endpoint_url": S3_ENDPOINT_URL or None,
            "region_name": S3_REGION,
            "access_key": S3_ACCESS_KEY_ID or None,
            "secret_key": S3_SECRET_ACCESS_KEY or None,
            "signature_version": "s3v4",
            "querystring_expire": S3_URL_EXPIRE_S,
            "file_overwrite": True,
            "default_acl": None,
        },
    },
}
STORAGES = {
    "default": MEDIA_STORE[MEDIA_STORAGE],
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage",
        # nginx's workers run as another user and must read these.
        "OPTIONS": {"file_permissions_mode": 0o644, "directory_permissions_mode": 0o755},
    },
}
UPLOAD_MAX_BYTES = UPLOAD_MAX_MB * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
# nginx (another user) serves media via X-Accel-Redirect; the internal location keeps them private.
FILE_UPLOAD_PERMISSIONS = 0o644
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o755

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "audio:jobs"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {
        "uploads": UPLOAD_RATE,
        "login": LOGIN_RATE,
        "job_actions": JOB_ACTION_RATE,
        "signup": SIGNUP_RATE,
        "signup_global": SIGNUP_GLOBAL_RATE,
        "verification_resend": VERIFICATION_RESEND_RATE,
    },
    # nginx sets X-Forwarded-For to the address it sees (it never passes a client's own):
    # the one proxy in front of Django. Throttles key on that address.
    "NUM_PROXIES": 1,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "core audio API",
    "DESCRIPTION": "Upload audio, follow its processing, download loudness-normalised renditions.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Security. nginx terminates TLS and overwrites X-Forwarded-Proto, so trusting it is safe.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
SECURE_CSP = {
    "default-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "object-src": ["'none'"],
    "frame-ancestors": ["'none'"],
    "base-uri": ["'self'"],
}
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"

# Email: EMAIL_URL such as smtp+tls://user:pass@host:587 or console://
vars().update(env.dj_email_url("EMAIL_URL", EMAIL_URL))
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# Celery. Tasks are idempotent, acknowledged after they finish and fetched one at a time.
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A task whose worker process dies goes back to the queue at once (not after the visibility
# timeout). A task that kills its worker each time cannot loop: a job's run is claimed at most
# AUDIO_MAX_ATTEMPTS times, then it fails (audio.services.pipeline.claim).
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = 10
# Redis redelivers unacknowledged tasks after the visibility timeout: keep it above the hard limit.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_TASK_TIME_LIMIT * 2 + 600,
    "socket_connect_timeout": 2,
    "socket_timeout": 10,
    "health_check_interval": 25,
}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT * 2 + 600}
CELERY_RESULT_EXPIRES = 24 * 3600
# Only tasks that someone waits for keep a result (ignore_result=False on the task): sending a
# task that keeps one subscribes to its result channel first, which blocks (and gives up for
# good) while the broker's Redis is down.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "celery"  # the worker's -Q (CELERY_QUEUES) must include it
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_TASK_TRACK_STARTED = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = env.float("CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT", 10.0)
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = True
CELERY_BEAT_SCHEDULER = "health.beat:HeartbeatDatabaseScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = 5
CELERY_TIMEZONE = TIME_ZONE

# Logs go to stdout/stderr; the process manager (supervisord or Docker) collects them.
LOGGING = logging_config(LOG_FORMAT, LOG_LEVEL, {"django.db.backends": {"level": "INFO"}})

_reporting = init_sentry(SENTRY_DSN, SENTRY_ENVIRONMENT, SENTRY_RELEASE, SENTRY_TRACES_SAMPLE_RATE)
if ADMINS and not _reporting:
    mail_admins_on_errors(LOGGING)
