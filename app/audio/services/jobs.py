"""A job's lifecycle as its owner drives it: create, cancel, re-run, delete; per-user limits."""

from __future__ import annotations

import errno
import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from accounts import services as accounts

from ..models import Job, Rendition
from ..presets import PRESETS
from ..processing import media
from ..tasks import process_job as process_job_task
from . import events, media_store

logger = logging.getLogger(__name__)
OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


class Refused(ValueError):
    """A request the job's state or the owner's limits do not allow; the message is for the user
    and `status` the HTTP status that says why (400 bad input, 403 unconfirmed email address,
    409 state, 413 quota, 429 limit, 507 the server's storage is full)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def limits() -> media.Limits:
    return media.Limits(
        max_duration_s=settings.AUDIO_MAX_DURATION_S,
        max_sample_rate=settings.AUDIO_MAX_SAMPLE_RATE,
        max_channels=settings.AUDIO_MAX_CHANNELS,
        encoder_memory_bytes=settings.AUDIO_ENCODER_MEMORY_MB * 2**20,
        encoder_cpu_s=settings.AUDIO_ENCODER_CPU_S,
        max_output_bytes=settings.AUDIO_MAX_OUTPUT_MB * 2**20,
    )


def storage_used(owner: User) -> int:
    """Bytes of sources and renditions the owner keeps (purged jobs keep none)."""
    kept = Q(files_purged_at__isnull=True)
    sources = Job.objects.owned_by(owner).filter(kept).aggregate(total=Sum("source_size"))
    renditions = Rendition.objects.filter(job__owner=owner, job__files_purged_at__isnull=True)
    return (sources["total"] or 0) + (renditions.aggregate(total=Sum("size"))["total"] or 0)


def check_limits(owner: User, new_bytes: int) -> None:
    """AUDIO_MAX_ACTIVE_JOBS (429) and AUDIO_USER_QUOTA_MB (413); `new_bytes` is what the request
    adds. Authoritative only under `_lock_owner` (two requests of one user cannot both pass)."""
    active = Job.objects.owned_by(owner).active().count()
    if active >= settings.AUDIO_MAX_ACTIVE_JOBS:
        raise Refused(
            f"you have {active} jobs queued or processing, the most allowed at once; "
            "wait for one to finish",
            status=429,
        )
    quota = settings.AUDIO_USER_QUOTA_MB * 1024 * 1024
    used = storage_used(owner)
    if new_bytes and used + new_bytes > quota:
        raise Refused(
            f"this upload would take your storage to {(used + new_bytes) / 2**20:.1f} MB, over "
            f"your {settings.AUDIO_USER_QUOTA_MB} MB quota; delete jobs you no longer need",
            status=413,
        )


def _lock_owner(owner: User) -> None:
    get_user_model().objects.select_for_update().filter(pk=owner.pk).first()


def enqueue_run(job_id: uuid.UUID | str, task_id: str) -> None:
    """Send the task that owns the run once the job row is committed. If the broker is down the
    job stays queued and the recovery sweep sends it again (its task is nowhere in the broker)."""

    def send() -> None:
        process_job_task.apply_async((str(job_id),), task_id=task_id)

    transaction.on_commit(send, robust=True)


def new_task_id() -> str:
    return str(uuid.uuid4())


def create_job(owner: User, upload: UploadedFile, preset: str) -> Job:
    """Store the upload under a server-generated name, check it is audio, queue its processing."""
    if not accounts.is_verified(owner):
        raise Refused(
            f"confirm your email address first: open the link we sent to {owner.email} "
            "(POST /api/auth/verify/resend/ sends another)",
            status=403,
        )
    if preset not in PRESETS:
        raise Refused(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    assert upload.size is not None  # Django's upload handlers always set it
    if upload.size == 0:
        raise Refused("the file is empty")
    if upload.size > settings.UPLOAD_MAX_BYTES:
        raise Refused(f"the file is larger than the {settings.UPLOAD_MAX_MB} MB limit", status=413)
    check_limits(owner, upload.size)  # early, before the copy; again under the lock below
    job = Job(
        owner=owner,
        preset=preset,
        original_name=media.sanitize_tag(upload.name or "upload")[:255] or "upload",
        source_size=upload.size,
        task_id=new_task_id(),
    )
    try:
        _store_source(job, upload)
        with transaction.atomic():
            _lock_owner(owner)
            check_limits(owner, upload.size)
            job.queued_at = timezone.now()
            job.save()
            enqueue_run(job.pk, job.task_id)
            events.job_changed(job.pk)
    except BaseException:
        media_store.remove(job.directory)
        raise
    logger.info("job %s created by user %s (task %s)", job.pk, owner.pk, job.task_id)
    return job


def _store_source(job: Job, upload: UploadedFile) -> None:
    try:
        job.directory.mkdir(parents=True, exist_ok=True)
        with job.source_path.open("wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
        job.source_path.chmod(0o644)
    except OSError as exc:
        if exc.errno in OUT_OF_SPACE:
            logger.error("upload refused: media storage is full (%s)", exc)
            raise Refused("the server is out of storage space; try again later", 507) from exc
        raise
    try:
        media.inspect(job.source_path, limits())  # header only; the worker decodes everything
    except media.InvalidAudio as exc:
        raise Refused(str(exc)) from exc
    media_store.publish(job.source_path)
    media_store.remove_local(job.directory)


def cancel_job(job: Job) -> None:
    """Cancel a queued or running job. A running task notices at its next heartbeat
    (AUDIO_HEARTBEAT_S), kills its encoder and gives the run up; until then `task_id` keeps
    naming it and its heartbeat goes on, so no re-run can overlap it."""
    now = timezone.now()
    with transaction.atomic():
        this = Job.objects.filter(pk=job.pk)
        canceled = this.filter(status=Job.Status.QUEUED).transition(
            status=Job.Status.CANCELED, phase="", task_id="", finished_at=now
        ) or this.filter(status=Job.Status.PROCESSING).transition(
            status=Job.Status.CANCELED, phase="", finished_at=now
        )
        if canceled:
            events.job_changed(job.pk)
    _refresh(job)
    if not canceled:
        raise Refused(f"a {job.status} job cannot be canceled", status=409)
    logger.info("job %s canceled", job.pk)


def rerun_job(job: Job) -> None:
    """Queue a finished job again with a new task (the source is kept until retention ends)."""
    if not job.is_finished:
        raise Refused(f"a {job.status} job cannot be re-run; cancel it first", status=409)
    if job.files_purged_at or not job.source_path.exists():
        raise Refused("the job's files have been deleted; upload the file again", status=409)
    now = timezone.now()
    stale = now - timedelta(seconds=settings.AUDIO_HEARTBEAT_TIMEOUT_S)
    task_id = new_task_id()
    with transaction.atomic():
        _lock_owner(job.owner)
        check_limits(job.owner, 0)
        # A canceled run still stopping keeps its task_id until it gives the run up (or dies).
        requeued = (
            Job.objects.filter(pk=job.pk, status__in=Job.FINISHED, files_purged_at__isnull=True)
            .filter(Q(task_id="") | Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=stale))
            .transition(
                status=Job.Status.QUEUED,
                task_id=task_id,
                queued_at=now,
                phase="",
                progress=0,
                error="",
                started_at=None,
                finished_at=None,
                heartbeat_at=None,
                attempts=0,
                notified_at=None,
                notification_claimed_at=None,
            )
        )
        if requeued:
            enqueue_run(job.pk, task_id)
            events.job_changed(job.pk)
    _refresh(job)
    if not requeued:
        raise Refused(
            "the job changed meanwhile or its last run is still stopping; try again in a moment",
            status=409,
        )
    logger.info("job %s queued again (task %s)", job.pk, task_id)


def _refresh(job: Job) -> None:
    try:
        job.refresh_from_db()
    except Job.DoesNotExist as exc:  # deleted by another request meanwhile
        raise Refused("the job no longer exists", status=404) from exc


def delete_job(job: Job) -> None:
    """Delete the row and the files. A task still running it finds the row gone and stops."""
    owner_id, job_id, directory = job.owner_id, job.pk, job.directory
    with transaction.atomic():
        # The job's row first, as a committing run takes it (then its renditions): no deadlock.
        Job.objects.select_for_update().filter(pk=job_id).exists()
        job.delete()
        events.job_deleted(owner_id, job_id)
    media_store.remove(directory)
