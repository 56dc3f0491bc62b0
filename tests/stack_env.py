"""pytest plugin (`-p tests.stack_env`, see pyproject): gives the test run its own native stack.

Loaded before pytest-django reads settings. The test stack lives in var/test on ports of its own,
so `make test` never touches a stack started with `make up`, nor the machine's own servers. The
chaos suite (`make test-chaos`, TEST_STACK=chaos) has another one in var/chaos, with production
settings but for ports and the recovery grace, since it kills and restarts its servers.
"""

import os
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR / "deployments" / "native"))

import envfiles  # noqa: E402

_TEST_STACK = {
    "STACK_DIR": str(REPO_DIR / "var" / "test"),
    "POSTGRES_PORT": "25532",
    "PGBOUNCER_PORT": "26532",
    "REDIS_BROKER_PORT": "26479",
    "REDIS_CACHE_PORT": "26480",
    "WEB_PORT": "28100",
    "EVENTS_PORT": "28101",
    "FLOWER_PORT": "25655",
    "WORKER_METRICS_PORT": "29908",
    "NGINX_STATUS_PORT": "28181",
    # Prometheus and the exporters (MONITORING=1), scraping every 2 s.
    "MONITORING": "1",
    "PROMETHEUS_SCRAPE_INTERVAL": "2s",
    "PROMETHEUS_PORT": "29190",
    "POSTGRES_EXPORTER_PORT": "29287",
    "PGBOUNCER_EXPORTER_PORT": "29227",
    "REDIS_BROKER_EXPORTER_PORT": "29221",
    "REDIS_CACHE_EXPORTER_PORT": "29222",
    "NGINX_EXPORTER_PORT": "29213",
    "NODE_EXPORTER_PORT": "29200",
    "NGINX_HTTP_PORT": "9080",
    "NGINX_HTTPS_PORT": "9443",
    "UPLOAD_MAX_MB": "2",  # small, so the body-size limit is cheap to test
    "EMAIL_URL": "smtp://127.0.0.1:28025",  # the SMTP sink the tests run (tests/conftest.py)
    "AUDIO_MAX_DURATION_S": "600",
    # The suite signs up many users from one address; the limit itself is still tested.
    "NGINX_LOGIN_RATE": "60r/m",
    "NGINX_LOGIN_BURST": "10",
    "SIGNUP_GLOBAL_RATE": "5000/hour",
}
_CHAOS_STACK = {  # ports of its own: var/ (make up), var/test and var/bench have theirs
    "STACK_DIR": str(REPO_DIR / "var" / "chaos"),
    "POSTGRES_PORT": "25732",
    "PGBOUNCER_PORT": "26732",
    "REDIS_BROKER_PORT": "26679",
    "REDIS_CACHE_PORT": "26680",
    "WEB_PORT": "28300",
    "EVENTS_PORT": "28301",
    "FLOWER_PORT": "25855",
    "WORKER_METRICS_PORT": "30108",
    "NGINX_STATUS_PORT": "28381",
    "NGINX_HTTP_PORT": "9280",
    "NGINX_HTTPS_PORT": "9643",
    "EMAIL_URL": "smtp://127.0.0.1:28225",
    # A job whose task the broker lost is sent again after 20 s, not 2 minutes.
    "AUDIO_QUEUED_GRACE_S": "20",
    # A hung encoder fails its job after 30 s, not 10 minutes. (The sender's limits travel in
    # each task message, so they are the stack's, web's included, not only the worker's.)
    "CELERY_TASK_SOFT_TIME_LIMIT": "30",
    "CELERY_TASK_TIME_LIMIT": "45",
    "SIGNUP_GLOBAL_RATE": "5000/hour",
}
#: The environment this process started with, before the test stack's was laid over it: what
#: commands that must not see the test stack (the compose suites) run with.
ORIGINAL_ENVIRON = dict(os.environ)
TEST_STACK = os.environ.get("TEST_STACK", "test")
TEST_STACK_OVERRIDES = {"test": _TEST_STACK, "chaos": _CHAOS_STACK}[TEST_STACK]
for _key in [k for k in os.environ if k.startswith("STACK_")]:
    del os.environ[_key]
os.environ.update(TEST_STACK_OVERRIDES)

#: The environment the test stack's processes run with (production settings).
STACK_ENV: dict[str, str] = envfiles.load_env()

# The test process itself: test settings, and the Django test database made directly on the
# stack's PostgreSQL (a test database cannot be dropped while PgBouncer holds connections to it).
os.environ.update(STACK_ENV)
os.environ.update(
    {
        "DJANGO_ENV": "test",
        "DEBUG": "false",
        "DATABASE_URL": STACK_ENV["DATABASE_DIRECT_URL"],
        "DATABASE_POOL_MAX_SIZE": "0",
        "DATABASE_BEHIND_PGBOUNCER": "false",
    }
)
