"""Fixtures of the integration tier (real PostgreSQL, PgBouncer and Redis; tasks eager)."""

import uuid

import pytest
from django.contrib.auth.models import AbstractBaseUser

from audio import tasks
from core.celery import app as celery_app
from tests.factories import make_user


@pytest.fixture
def user() -> AbstractBaseUser:
    return make_user()


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The (job id, task id) of each processing task sent, instead of sending it."""
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(
        tasks.process_job, "apply_async", lambda args, task_id: sent.append((args[0], task_id))
    )
    return sent


@pytest.fixture
def broker_queue(settings):
    """A queue of its own on the test stack's broker, which no worker reads."""
    settings.CELERY_TASK_DEFAULT_QUEUE = f"test-queue-{uuid.uuid4().hex[:8]}"
    yield settings.CELERY_TASK_DEFAULT_QUEUE
    with celery_app.connection_for_write() as connection:
        connection.default_channel.client.delete(settings.CELERY_TASK_DEFAULT_QUEUE)
