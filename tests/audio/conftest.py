"""Shared set-up for the audio tests: users, jobs in a given state, and the tasks they send."""

import uuid
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from accounts.models import EmailAddress
from audio import tasks
from audio.models import Job
from core.celery import app as celery_app


def make_user(name: str = "olga", verified: bool = True) -> AbstractBaseUser:
    """A user; `verified` as if they had followed the link of the verification email."""
    username = f"{name}-{uuid.uuid4().hex[:6]}"
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pw-123456!")
    EmailAddress.objects.create(
        user=user, email=user.email, verified_at=timezone.now() if verified else None
    )
    return user


def make_job(user: AbstractBaseUser, tmp_path: Path, settings: object, **fields: object) -> Job:
    """A job row with a (fake) source file under MEDIA_ROOT=tmp_path."""
    settings.MEDIA_ROOT = tmp_path
    job = Job.objects.create(owner=user, preset="podcast", original_name="a.wav", **fields)
    job.directory.mkdir(parents=True)
    job.source_path.write_bytes(b"x")
    return job


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


def waiting_in_broker(queue: str, task_id: str, job_id: object = None) -> None:
    """A task message for a job, waiting in `queue` (no worker takes it)."""
    args = (str(job_id or uuid.uuid4()),)
    celery_app.send_task("audio.process_job", args, task_id=task_id, queue=queue)
