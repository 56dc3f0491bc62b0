"""Celery tasks: thin wrappers around audio.services."""

from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError

from . import services

# Failures worth another try: the database or the broker blinked.
TRANSIENT = (OperationalError, InterfaceError, ConnectionError, TimeoutError)


class JobTask(Task):
    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        if isinstance(exc, SoftTimeLimitExceeded):
            reason = "processing took longer than the time limit"
        elif isinstance(exc, TRANSIENT):
            reason = "a temporary problem persisted; please re-run the job"
        else:
            reason = f"internal error while processing (reference {task_id})"
        services.fail_job(job_id, reason)


@shared_task(
    base=JobTask,
    name="audio.process_job",
    autoretry_for=TRANSIENT,
    retry_backoff=5,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=4,
)
def process_job(job_id: str) -> None:
    services.process_job(job_id)


@shared_task(
    name="audio.send_job_notification",
    autoretry_for=(OSError, OperationalError),
    retry_backoff=10,
    retry_backoff_max=600,
    max_retries=8,
)
def send_job_notification(job_id: str) -> bool:
    return services.send_job_notification(job_id)


@shared_task(name="audio.purge_expired_files")
def purge_expired_files() -> int:
    return services.purge_expired_files()


@shared_task(name="audio.recover_stuck_jobs")
def recover_stuck_jobs() -> dict[str, int]:
    return services.recover_stuck_jobs()


@shared_task(
    name="audio.send_daily_summary", autoretry_for=(OSError,), retry_backoff=60, max_retries=5
)
def send_daily_summary() -> int:
    return services.send_daily_summary()
