"""Liveness and readiness against real services (the test stack's PostgreSQL, Redis)."""

import os
import time

import pytest
import redis
from django.test import Client, override_settings

from health import heartbeat

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_dependencies() -> None:
    # A dead cache and database would fail readiness; liveness must not care.
    with override_settings(CACHES={"default": {"BACKEND": "no.such.Backend"}}):
        response = Client().get("/healthz", headers={"host": "not-allowed.example"})
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_each_component_with_latency() -> None:
    response = Client().get("/readyz", headers={"host": "10.1.2.3:8000"})
    body = response.json()
    assert response.status_code == 200, body
    assert set(body["checks"]) == {"database", "cache", "broker"}
    for check in body["checks"].values():
        assert check["ok"] is True
        assert 0 < check["latency_ms"] < 2000


@pytest.mark.parametrize(
    ("setting", "value", "component"),
    [
        ("CELERY_BROKER_URL", "redis://127.0.0.1:1/0", "broker"),
        ("CACHES", None, "cache"),
    ],
)
def test_readyz_is_503_naming_the_failed_component(
    setting: str, value: str | None, component: str
) -> None:
    if setting == "CACHES":
        value = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": "redis://127.0.0.1:1/0",
                "OPTIONS": {"socket_connect_timeout": 1.0, "socket_timeout": 1.0},
            }
        }
    started = time.monotonic()
    with override_settings(**{setting: value}):
        response = Client().get("/readyz")
    elapsed = time.monotonic() - started
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unavailable"
    assert body["checks"][component]["ok"] is False
    assert body["checks"][component]["error"]
    assert elapsed < 4, "every check has a short timeout"
    others = set(body["checks"]) - {component}
    assert all(body["checks"][name]["ok"] for name in others)


def test_heartbeat_age_and_check(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HEARTBEAT_DIR", str(tmp_path))
    assert heartbeat.age("worker") is None
    assert heartbeat.main(["check", "worker"]) == 1
    heartbeat.touch("worker")
    assert heartbeat.age("worker") < 5
    assert heartbeat.main(["check", "worker", "--max-age", "30"]) == 0
    old = time.time() - 120
    os.utime(tmp_path / "worker", (old, old))
    assert heartbeat.main(["check", "worker", "--max-age", "30"]) == 1


def test_readyz_from_outside_shows_only_the_status() -> None:
    """Through nginx the client's address is the visitor's: no hosts, latencies or errors."""
    public = Client(REMOTE_ADDR="203.0.113.9")
    assert public.get("/readyz").json() == {"status": "ok"}
    with override_settings(CELERY_BROKER_URL="redis://10.9.8.7:1/0"):
        response = public.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable"}  # not a word about 10.9.8.7
    assert "checks" in Client(REMOTE_ADDR="10.0.0.5").get("/readyz").json()


def test_readiness_probes_reuse_their_broker_connection(settings) -> None:
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    Client().get("/readyz")  # the first probe opens the pooled connection

    def accepted() -> int:
        return broker.info("stats")["total_connections_received"]

    before = accepted()
    for _ in range(30):
        assert Client().get("/readyz").status_code == 200
    # Other processes of the stack connect now and then; a connection per probe would be 30.
    assert accepted() - before < 10
