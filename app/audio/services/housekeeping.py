"""Beat's periodic jobs: recover jobs whose task was lost or whose worker died; purge files."""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from core import broker

from ..models import Job
from . import events
from .jobs import enqueue_run, new_task_id
from .pipeline import fail_run

logger = logging.getLogger(__name__)


def recover_stuck_jobs(now: datetime | None = None) -> dict[str, int]:
    """Queue again each job whose task is gone: processing with a heartbeat older than
    AUDIO_HEARTBEAT_TIMEOUT_S, or queued for AUDIO_QUEUED_GRACE_S, and its task neither waiting in
    the broker nor recently delivered to a worker. A job whose task is still there is left to it
    (a redelivered task takes its own run over). Past AUDIO_MAX_ATTEMPTS the job fails."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.AUDIO_HEARTBEAT_TIMEOUT_S)
    candidates = list(
        Job.objects.filter(
            Q(status=Job.Status.PROCESSING, heartbeat_at__lt=stale)
            | Q(status=Job.Status.PROCESSING, heartbeat_at__isnull=True, started_at__lt=stale)
            | Q(status=Job.Status.QUEUED,
                queued_at__lt=now - timedelta(seconds=settings.AUDIO_QUEUED_GRACE_S))
        ).values("pk", "status", "task_id", "attempts")
    )  # fmt: skip
    result = {"requeued": 0, "failed": 0, "left_to_their_task": 0}
    if not candidates:
        return result
    # A task delivered to a worker lately may be about to run (or waiting to take its run over).
    pending = broker.pending_task_ids(
        delivered_within_s=2 * settings.AUDIO_HEARTBEAT_TIMEOUT_S,
        queues=(settings.CELERY_TASK_DEFAULT_QUEUE,),
    )
    for job in candidates:
        if job["task_id"] in pending:
            result["left_to_their_task"] += 1
        elif (
            job["status"] == Job.Status.PROCESSING
            and job["attempts"] >= settings.AUDIO_MAX_ATTEMPTS
        ):
            reason = "processing stopped repeatedly before finishing; giving up"
            result["failed"] += fail_run(job["pk"], job["task_id"], reason)
        elif _requeue(job, now):
            result["requeued"] += 1
    if result["requeued"] or result["failed"]:
        logger.warning("stuck jobs: %s", result)
    return result


def _requeue(job: dict, now: datetime) -> bool:
    task_id = new_task_id()
    requeued = Job.objects.filter(
        pk=job["pk"], status=job["status"], task_id=job["task_id"]
    ).transition(
        status=Job.Status.QUEUED, task_id=task_id, queued_at=now, phase="", heartbeat_at=None
    )
    if requeued:
        logger.info(
            "job %s: task %s is gone; queued again as task %s", job["pk"], job["task_id"], task_id
        )
        enqueue_run(job["pk"], task_id)
        events.job_changed(job["pk"])
    return bool(requeued)


def purge_expired_files(now: datetime | None = None) -> int:
    """Delete the files of jobs finished longer ago than AUDIO_RETENTION_DAYS; keep the rows."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.AUDIO_RETENTION_DAYS)
    expired = Job.objects.filter(
        status__in=Job.FINISHED, finished_at__lt=cutoff, files_purged_at__isnull=True
    )
    count = 0
    for job in expired.iterator(chunk_size=200):
        # Marked first, on the same conditions: a job re-run meanwhile keeps its files.
        if not expired.filter(pk=job.pk).update(files_purged_at=now, has_waveform=False):
            continue
        shutil.rmtree(job.directory, ignore_errors=True)
        job.renditions.all().delete()
        events.job_changed(job.pk)  # its downloads are gone from cached pages too
        count += 1
    return count
