"""Every variable the settings and scripts read is documented in both env examples."""

import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.stack_env import REPO_DIR

EXAMPLES = [REPO_DIR / ".env.example", REPO_DIR / ".env.prod.example"]
# Set by the runner/containers themselves, or only meaningful natively (defaults.env).
NOT_USER_FACING = {
    "APP_DIR",
    "REPO_DIR",
    "STACK_DIR",
    "PGDATA",
    "HEARTBEAT_DIR",
    "REDIS_DATA_DIR",
    "REDIS_BIND",
    "POSTGRES_SOCKET_DIR",
    "POSTGRES_LISTEN_ADDR",
    "PGBOUNCER_CONF_DIR",
    "PGBOUNCER_SOCKET_DIR",
    "PGBOUNCER_LISTEN_ADDR",
    "PGBOUNCER_MAX_DB_CONNECTIONS",
    "NGINX_CONF_DIR",
    "NGINX_RUN_DIR",
    "NGINX_PUBLIC_HTTPS_PORT",
    "WEB_UPSTREAM",
    "EVENTS_UPSTREAM",
    "FLOWER_UPSTREAM",
    "STATIC_ROOT",
    "MEDIA_ROOT",
    "ACME_ROOT",
    "TLS_CERT",
    "TLS_KEY",
    "WEB_BIND",
    "WEB_PORT",
    "FLOWER_BIND",
    "FLOWER_PORT",
    "REDIS_BROKER_PORT",
    "REDIS_CACHE_PORT",
    "DATABASE_APPLICATION_NAME",
    "DATABASE_TEST_NAME",
    "RUN_RELEASE",
    "NGINX_RELOAD_INTERVAL",
    "CELERY_QUEUES",
    "CELERY_DATABASE_CONN_MAX_AGE",
    "WAIT_DATABASE",
    "EVENTS_PORT",
    # Metrics: where each process listens and keeps its files, and Prometheus's targets, set by
    # the runners (defaults.env, docker-compose.yml); FLOWER_USER is derived.
    "METRICS_DIR",
    "WORKER_METRICS_BIND",
    "NGINX_STATUS_LISTEN",
    "NGINX_STATUS_ADDRESS",
    "PROMETHEUS_CONF_DIR",
    "PROMETHEUS_DATA_DIR",
    "PROMETHEUS_LISTEN",
    "PROMETHEUS_TARGET",
    "PROMETHEUS_STACK_LABEL",
    "PGBOUNCER_HOST",
    "NODE_ROOTFS",
    "FLOWER_USER",
    "WEB_METRICS_TARGET",
    "EVENTS_METRICS_TARGET",
    "WORKER_METRICS_TARGET",
    "FLOWER_METRICS_TARGET",
    "POSTGRES_EXPORTER_TARGET",
    "PGBOUNCER_EXPORTER_TARGET",
    "REDIS_BROKER_EXPORTER_TARGET",
    "REDIS_CACHE_EXPORTER_TARGET",
    "NGINX_EXPORTER_TARGET",
    "NODE_EXPORTER_TARGET",
    # nginx's resolver (docker-compose.yml sets Docker's), and the deploy script's own knobs (its
    # shell's environment, not a container's; README, "Deploys").
    "NGINX_RESOLVER",
    "NGINX_RESOLVER_VALID",
    "DEPLOY_HEALTH_TIMEOUT",
    "DEPLOY_SETTLE_SECONDS",
}


def read_variables() -> set[str]:
    names: set[str] = set()
    settings = (REPO_DIR / "app" / "core" / "settings.py").read_text()
    names |= set(re.findall(r'env\.\w+\(\s*"([A-Z][A-Z0-9_]+)"', settings))
    for script in (REPO_DIR / "deployments" / "compose").rglob("*"):
        if (
            script.is_file()
            and script.suffix not in {".conf", ".pyc"}
            and script.name != "Dockerfile"
        ):
            text = script.read_text()
            names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", text))
            names |= set(re.findall(r"environ\.get\(\s*\"([A-Z][A-Z0-9_]+)\"", text))
    derived = {"BASH_SOURCE", "UPPER_CASE", "NGINX_CLIENT_MAX_BODY_SIZE", "NGINX_HTTPS_PORT_SUFFIX"}
    return names - NOT_USER_FACING - derived


def test_variables_were_found() -> None:
    assert {"SECRET_KEY", "DATABASE_URL", "WEB_CONCURRENCY", "PGBOUNCER_DEFAULT_POOL_SIZE"} <= (
        read_variables()
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_variable_is_documented(example: Path) -> None:
    documented = set(dotenv_values(example))
    missing = sorted(read_variables() - documented)
    assert missing == [], f"{example.name} lacks {missing}"


def test_examples_hold_no_real_secrets() -> None:
    prod = dotenv_values(REPO_DIR / ".env.prod.example")
    for name in (
        "SECRET_KEY",
        "POSTGRES_PASSWORD",
        "PGBOUNCER_ADMIN_PASSWORD",
        "REDIS_BROKER_PASSWORD",
        "REDIS_CACHE_PASSWORD",
        "APP_DB_PASSWORD",
    ):
        assert prod[name].startswith("<"), f"{name} must be a placeholder"
