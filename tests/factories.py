"""Rows the database tests build on (cookiecutter-django's factories, as plain functions): users,
jobs in a given state, and task messages waiting in the broker."""

import io
import uuid
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from accounts.models import EmailAddress
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


def client_for(username: str) -> APIClient:
    """An API client signed in as a new user."""
    client = APIClient()
    client.force_authenticate(make_user(username))
    return client


def token_client(user: AbstractBaseUser) -> APIClient:
    """An API client sending a new token of `user`, as API clients do."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def make_job(user: AbstractBaseUser, tmp_path: Path, settings: object, **fields: object) -> Job:
    """A job row with a (fake) source file under MEDIA_ROOT=tmp_path."""
    settings.MEDIA_ROOT = tmp_path
    job = Job.objects.create(owner=user, preset="podcast", original_name="a.wav", **fields)
    job.directory.mkdir(parents=True)
    job.source_path.write_bytes(b"x")
    return job


def waiting_in_broker(queue: str, task_id: str, job_id: object = None) -> None:
    """A task message for a job, waiting in `queue` (no worker takes it)."""
    args = (str(job_id or uuid.uuid4()),)
    celery_app.send_task("audio.process_job", args, task_id=task_id, queue=queue)


def upload(client: APIClient, path: Path, preset: str = "podcast", name: str | None = None):
    """POST /api/jobs/ with `path` as the file (named `name`), as a browser's form sends it."""
    with path.open("rb") as f:
        data = io.BytesIO(f.read())
    data.name = name or path.name
    return client.post("/api/jobs/", {"file": data, "preset": preset}, format="multipart")
