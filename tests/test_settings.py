"""Settings come from the environment; bad values stop start-up with the variable's name."""

import os
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
