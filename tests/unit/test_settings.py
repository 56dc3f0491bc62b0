"""Settings come from the environment; bad values stop start-up with the variable's name."""

import os
import secrets
import subprocess
import sys

import pytest

from tests.stack_env import REPO_DIR, STACK_ENV

PRODUCTION = {
    **STACK_ENV,
    "DJANGO_ENV": "production",
    "DEBUG": "false",
    "ALLOWED_HOSTS": "example.com",
}


def django_setup(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    code = "import django; django.setup()" if not args else None
    command = [sys.executable, "-c", code] if code else [sys.executable, "manage.py", *args]
    return subprocess.run(
        command,
        cwd=REPO_DIR / "app",
        env={**env, "PYTHONWARNINGS": "ignore", "DJANGO_SETTINGS_MODULE": "core.settings"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_production_settings_load() -> None:
    result = django_setup(PRODUCTION)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DEBUG", "true", "DEBUG: must be off"),
        ("SECRET_KEY", "short", "SECRET_KEY: must be a random string"),
        ("SECRET_KEY", "django-insecure-" + "x" * 60, "SECRET_KEY"),
        ("ALLOWED_HOSTS", "", "ALLOWED_HOSTS: must list"),
        ("UPLOAD_MAX_MB", "lots", "UPLOAD_MAX_MB"),
        ("DATABASE_POOL_MAX_SIZE", "-1", "DATABASE_POOL_MAX_SIZE"),
        ("DJANGO_ENV", "staging", "DJANGO_ENV"),
        ("CELERY_TASK_SOFT_TIME_LIMIT", "9999", "CELERY_TASK_SOFT_TIME_LIMIT"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
        ("SENTRY_TRACES_SAMPLE_RATE", "2", "SENTRY_TRACES_SAMPLE_RATE"),
        ("MEDIA_STORAGE", "s3", "S3_BUCKET: is required with MEDIA_STORAGE=s3"),
        ("MEDIA_STORAGE", "ftp", "MEDIA_STORAGE"),
    ],
)
def test_bad_production_env_names_the_variable(variable: str, value: str, message: str) -> None:
    result = django_setup({**PRODUCTION, variable: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("variable", ["DATABASE_URL", "CACHE_URL", "CELERY_BROKER_URL"])
def test_missing_required_variable_is_named(variable: str) -> None:
    env = {k: v for k, v in PRODUCTION.items() if k != variable}
    result = django_setup(env)
    assert result.returncode != 0
    assert variable in result.stderr.splitlines()[-1]


def test_check_deploy_passes_with_production_env() -> None:
    result = django_setup(PRODUCTION, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_test_run_uses_test_settings() -> None:
    from django.conf import settings

    assert os.environ["DJANGO_ENV"] == "test"
    assert settings.DJANGO_ENV == "test"
    assert not settings.SECURE_SSL_REDIRECT


def test_secrets_can_come_from_files(tmp_path) -> None:
    """SECRET_KEY_FILE / DATABASE_URL_FILE (Swarm and Kubernetes secrets): the settings read the
    files, a `docker exec`'d manage.py included; an unreadable one is named at start-up."""
    secret_key, database_url = tmp_path / "secret_key", tmp_path / "database_url"
    key = secrets.token_urlsafe(64)
    secret_key.write_text(key + "\n")
    database_url.write_text(PRODUCTION["DATABASE_URL"] + "\n")
    env = {k: v for k, v in PRODUCTION.items() if k not in {"SECRET_KEY", "DATABASE_URL"}}
    env |= {"SECRET_KEY_FILE": str(secret_key), "DATABASE_URL_FILE": str(database_url)}
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SECRET_KEY, s.DATABASES['default']['NAME'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_DIR / "app",
        env={**env, "DJANGO_SETTINGS_MODULE": "core.settings"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [key, PRODUCTION["DATABASE_URL"].rsplit("/", 1)[1]]
    broken = django_setup({**env, "SECRET_KEY_FILE": str(tmp_path / "missing")})
    assert "SECRET_KEY_FILE: cannot read" in broken.stderr.splitlines()[-1]


def test_the_shell_scripts_read_the_same_secret_files(tmp_path) -> None:
    """deployments/compose/file-env (PgBouncer, Redis, the backup, the entrypoint) knows the same
    secrets as the settings, and sets each from its file."""
    from core.settings import SECRET_VARIABLES

    file_env = REPO_DIR / "deployments" / "compose" / "file-env"
    listed = file_env.read_text().split('secret_variables="', 1)[1].split('"', 1)[0].split()
    assert tuple(listed) == SECRET_VARIABLES
    (tmp_path / "password").write_text("s3cret\n")
    shell = subprocess.run(
        ["bash", "-c", f'. {file_env}; printf "%s|%s" "$REDIS_BROKER_PASSWORD" "$APP_DB_PASSWORD"'],
        env={
            "PATH": os.environ["PATH"],
            "REDIS_BROKER_PASSWORD_FILE": str(tmp_path / "password"),
            "APP_DB_PASSWORD": "kept",
            "APP_DB_PASSWORD_FILE": str(tmp_path / "password"),
            "TF_CLI_CONFIG_FILE": "/nonexistent",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (shell.returncode, shell.stdout) == (0, "s3cret|kept"), shell.stderr
