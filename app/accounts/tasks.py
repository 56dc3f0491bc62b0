"""Celery tasks of the accounts app: thin wrappers around accounts.services."""

from celery import shared_task
from django.db import OperationalError


@shared_task(
    name="accounts.send_verification_email",
    autoretry_for=(OSError, OperationalError),
    retry_backoff=10,
    retry_backoff_max=600,
    max_retries=8,
)
def send_verification_email(user_id: int) -> None:
    from . import services

    services.send_verification_email(user_id)
