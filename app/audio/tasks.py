"""Celery tasks: thin wrappers around audio.services (HackSoft style: services import these tasks
at the top, so each task imports its service inside its body)."""

from typing import Any, cast

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError

from core import log_context

# Failures worth another try: the database or the broker blinked.
TRANSIENT = (OperationalError, InterfaceError, ConnectionError, TimeoutError)


class JobLogged(Task):
    """A task about one job (its first argument): its log lines carry the job id."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        job_id = args[0] if args else kwargs.get("job_id", "")
        with log_context.bound(job_id=str(job_id)):
            return super().__call__(*args, **kwargs)


class JobTask(JobLogged):
    """Processing a job: a failure that ends the task fails the run, with a reason."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        from .services import pipeline

        job_id = args[0] if args else kwargs.get("job_id")
        if isinstance(exc, SoftTimeLimitExceeded):
            reason = "processing took longer than the time limit"
        elif isinstance(exc, TRANSIENT):
            reason = "a temporary problem persisted; please re-run the job"
        else:
            reason = f"internal error while processing (reference {task_id})"
        pipeline.fail_run(job_id, task_id, reason)


@shared_task(
    bind=True,
    base=JobTask,
    name="audio.process_job",
    autoretry_for=TRANSIENT,
    retry_backoff=5,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=4,
)
def process_job(self: Task, job_id: str) -> None:
    from .services import pipeline

    try:
        pipeline.process_job(job_id, cast(str, self.request.id))  # set while a task runs
    except pipeline.Busy as busy:  # waiting to take a dead delivery's run over is not an error
        raise self.retry(countdown=busy.retry_in, max_retries=self.request.retries + 1) from None
    except TRANSIENT:
        pipeline.release_run(job_id, cast(str, self.request.id))
        raise


@shared_task(
    bind=True,
    base=JobLogged,
    name="audio.send_job_notification",
    autoretry_for=(OSError, OperationalError),
    retry_backoff=10,
    retry_backoff_max=600,
    max_retries=8,
)
def send_job_notification(self: Task, job_id: str) -> bool:
    from .services import notifications

    try:
        return notifications.send_job_notification(job_id)
    except notifications.NotificationBusy as busy:
        raise self.retry(countdown=busy.retry_in, max_retries=self.request.retries + 1) from None


@shared_task(name="audio.purge_expired_files")
def purge_expired_files() -> int:
    from .services import housekeeping

    return housekeeping.purge_expired_files()


@shared_task(name="audio.recover_stuck_jobs")
def recover_stuck_jobs() -> dict[str, int]:
    from .services import housekeeping

    return housekeeping.recover_stuck_jobs()


@shared_task(
    name="audio.send_daily_summary", autoretry_for=(OSError,), retry_backoff=60, max_retries=5
)
def send_daily_summary() -> int:
    from .services import notifications

    return notifications.send_daily_summary()
