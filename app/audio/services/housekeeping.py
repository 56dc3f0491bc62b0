"""Beat's periodic jobs: recover jobs whose task was lost or whose worker died; purge files.
The operator commands (`requeue_stuck_jobs`, `purge_jobs`) call the same functions."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from core import broker

from ..models import Job, JobQuerySet
from . import events, media_store
from .jobs import delete_job, enqueue_run, new_task_id
from .pipeline import fail_run

logger = logging.getLogger(__name__)


#: What the sweep does with a stuck job (StuckJob.action), and the outcome counted for it.
REQUEUE, FAIL, LEAVE = "requeue", "fail", "leave"
OUTCOMES = {REQUEUE: "requeued", FAIL: "failed", LEAVE: "left_to_their_task"}


@dataclass(frozen=True)
class StuckJob:
    """A job the sweep would act on, and what it would do (`action`: REQUEUE, FAIL or LEAVE)."""

    pk: uuid.UUID
    status: str
    task_id: str
    attempts: int
    owner_id: int
    action: str


def stuck_jobs(
    now: datetime | None = None,
    *,
    older_than_s: float | None = None,
    owner: User | None = None,
) -> list[StuckJob]:
    """Selector: the jobs whose task looks gone, each with what the sweep does with it.

    Stuck: processing with a heartbeat older than AUDIO_HEARTBEAT_TIMEOUT_S, or queued for
    AUDIO_QUEUED_GRACE_S. `older_than_s` replaces both thresholds, but a processing job's is never
    below AUDIO_HEARTBEAT_TIMEOUT_S: a run with a live heartbeat stays with its task. A job whose
    task is still waiting in the broker or was recently delivered to a worker is LEAVE (a
    redelivered task takes its own run over); past AUDIO_MAX_ATTEMPTS a processing job is FAIL."""
    now = now or timezone.now()
    heartbeat_timeout: float = settings.AUDIO_HEARTBEAT_TIMEOUT_S
    queued_grace: float = settings.AUDIO_QUEUED_GRACE_S
    if older_than_s is not None:
        heartbeat_timeout = max(older_than_s, heartbeat_timeout)
        queued_grace = older_than_s
    stale = now - timedelta(seconds=heartbeat_timeout)
    jobs = Job.objects.filter(
        Q(status=Job.Status.PROCESSING, heartbeat_at__lt=stale)
        | Q(status=Job.Status.PROCESSING, heartbeat_at__isnull=True, started_at__lt=stale)
        | Q(status=Job.Status.QUEUED, queued_at__lt=now - timedelta(seconds=queued_grace))
    )
    if owner is not None:
        jobs = jobs.owned_by(owner)
    candidates = list(
        jobs.order_by("queued_at", "pk").values("pk", "status", "task_id", "attempts", "owner_id")
    )
    if not candidates:
        return []
    # A task delivered to a worker lately may be about to run (or waiting to take its run over).
    pending = broker.pending_task_ids(
        delivered_within_s=2 * settings.AUDIO_HEARTBEAT_TIMEOUT_S,
        queues=(settings.CELERY_TASK_DEFAULT_QUEUE,),
    )
    result = []
    for job in candidates:
        if job["task_id"] in pending:
            action = LEAVE
        elif (
            job["status"] == Job.Status.PROCESSING
            and job["attempts"] >= settings.AUDIO_MAX_ATTEMPTS
        ):
            action = FAIL
        else:
            action = REQUEUE
        result.append(StuckJob(action=action, **job))
    return result


def recover_stuck_job(job: StuckJob, now: datetime | None = None) -> str | None:
    """Do what `stuck_jobs` decided for one job; the outcome (a key of OUTCOMES' values), or
    None when the job changed since it was selected (its task woke up, or it was canceled)."""
    now = now or timezone.now()
    if job.action == LEAVE:
        return OUTCOMES[LEAVE]
    if job.action == FAIL:
        reason = "processing stopped repeatedly before finishing; giving up"
        return OUTCOMES[FAIL] if fail_run(job.pk, job.task_id, reason) else None
    return OUTCOMES[REQUEUE] if _requeue(job, now) else None


def recover_stuck_jobs(
    now: datetime | None = None,
    *,
    older_than_s: float | None = None,
    owner: User | None = None,
) -> dict[str, int]:
    """Queue again each job whose task is gone: processing with a heartbeat older than
    AUDIO_HEARTBEAT_TIMEOUT_S, or queued for AUDIO_QUEUED_GRACE_S, and its task neither waiting in
    the broker nor recently delivered to a worker. A job whose task is still there is left to it
    (a redelivered task takes its own run over). Past AUDIO_MAX_ATTEMPTS the job fails.
    (Beat's sweep; `manage.py requeue_stuck_jobs` runs the same two steps with its filters.)"""
    now = now or timezone.now()
    result = dict.fromkeys(OUTCOMES.values(), 0)
    for job in stuck_jobs(now, older_than_s=older_than_s, owner=owner):
        outcome = recover_stuck_job(job, now)
        if outcome:
            result[outcome] += 1
    if result["requeued"] or result["failed"]:
        logger.warning("stuck jobs: %s", result)
    return result


def _requeue(job: StuckJob, now: datetime) -> bool:
    task_id = new_task_id()
    requeued = Job.objects.filter(pk=job.pk, status=job.status, task_id=job.task_id).transition(
        status=Job.Status.QUEUED, task_id=task_id, queued_at=now, phase="", heartbeat_at=None
    )
    if requeued:
        logger.info(
            "job %s: task %s is gone; queued again as task %s", job.pk, job.task_id, task_id
        )
        enqueue_run(job.pk, task_id)
        events.job_changed(job.pk)
    return bool(requeued)


def purgeable_jobs(
    now: datetime | None = None,
    *,
    older_than_days: float | None = None,
    owner: User | None = None,
    statuses: Iterable[str] | None = None,
    include_purged: bool = False,
) -> JobQuerySet:
    """Selector: finished jobs (all FINISHED statuses, or `statuses`, a subset of them) that
    finished more than `older_than_days` (default AUDIO_RETENTION_DAYS) ago and still have their
    files (`include_purged`: those whose files are gone too). Active jobs are never purgeable."""
    now = now or timezone.now()
    days = settings.AUDIO_RETENTION_DAYS if older_than_days is None else older_than_days
    statuses = list(Job.FINISHED if statuses is None else statuses)
    if not set(statuses) <= set(Job.FINISHED):
        raise ValueError(f"only finished jobs can be purged, not {sorted(statuses)}")
    jobs = Job.objects.filter(status__in=statuses, finished_at__lt=now - timedelta(days=days))
    if not include_purged:
        jobs = jobs.filter(files_purged_at__isnull=True)
    if owner is not None:
        jobs = jobs.owned_by(owner)
    return jobs.order_by("finished_at", "pk")


def purge_job_files(job: Job, now: datetime | None = None) -> bool:
    """Delete a finished job's files (source, renditions, waveform) and its rendition rows; keep
    the job's row, marked purged. False if the job was re-run (or purged) since it was read."""
    now = now or timezone.now()
    # Marked first, on the conditions it was selected on: a job re-run meanwhile keeps its files.
    marked = Job.objects.filter(
        pk=job.pk,
        status__in=Job.FINISHED,
        finished_at=job.finished_at,
        files_purged_at__isnull=True,
    ).update(files_purged_at=now, has_waveform=False)
    if not marked:
        return False
    media_store.remove(job.directory)
    job.renditions.all().delete()
    events.job_changed(job.pk)  # its downloads are gone from cached pages too
    return True


def delete_finished_job(job: Job) -> bool:
    """Delete a finished job, row and files (`jobs.delete_job`); False if it is no longer
    finished (re-run meanwhile) or already gone."""
    with transaction.atomic():
        if not Job.objects.select_for_update().filter(pk=job.pk, status__in=Job.FINISHED).exists():
            return False
        delete_job(job)
    return True


def purge_expired_files(now: datetime | None = None) -> int:
    """Delete the files of jobs finished longer ago than AUDIO_RETENTION_DAYS; keep the rows."""
    now = now or timezone.now()
    return sum(purge_job_files(job, now) for job in purgeable_jobs(now).iterator(chunk_size=200))
