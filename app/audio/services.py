"""Audio jobs: the domain operations that views, tasks and the admin call."""

from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from .models import WAVEFORM_CONTENT_TYPES, Job, Rendition
from .presets import PRESETS
from .processing import encode, image, media

logger = logging.getLogger(__name__)
PROGRESS_EVERY_SECONDS = 1.0


class UploadRejected(ValueError):
    """An upload refused before any job runs; the message is for the user."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class JobCanceled(Exception):
    pass


def limits() -> media.Limits:
    return media.Limits(
        max_duration_s=settings.AUDIO_MAX_DURATION_S,
        max_sample_rate=settings.AUDIO_MAX_SAMPLE_RATE,
        max_channels=settings.AUDIO_MAX_CHANNELS,
    )


# --- creating, canceling, deleting ---------------------------------------------------------


def create_job(owner: AbstractBaseUser, upload: UploadedFile, preset: str) -> Job:
    """Store the upload under a server-generated name, check it is audio, queue its processing."""
    if preset not in PRESETS:
        raise UploadRejected(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if upload.size == 0:
        raise UploadRejected("the file is empty")
    if upload.size > settings.UPLOAD_MAX_BYTES:
        raise UploadRejected(
            f"the file is larger than the {settings.UPLOAD_MAX_MB} MB limit", status=413
        )
    job = Job(
        owner=owner,
        preset=preset,
        original_name=media.sanitize_tag(upload.name or "upload")[:255] or "upload",
        source_size=upload.size,
    )
    job.directory.mkdir(parents=True, exist_ok=True)
    try:
        with job.source_path.open("wb") as out:
            for chunk in upload.chunks():
                out.write(chunk)
        job.source_path.chmod(0o644)
        media.inspect(job.source_path, limits())  # header only; the worker decodes everything
    except media.InvalidAudio as exc:
        shutil.rmtree(job.directory, ignore_errors=True)
        raise UploadRejected(str(exc)) from exc
    job.save()
    _enqueue(job)
    return job


def _enqueue(job: Job) -> None:
    from .tasks import process_job  # tasks import services

    transaction.on_commit(lambda: process_job.delay(str(job.pk)))


def cancel_job(job: Job) -> bool:
    """Cancel a queued or running job; a running one stops at its next step."""
    updated = Job.objects.filter(
        pk=job.pk, status__in=[Job.Status.QUEUED, Job.Status.PROCESSING]
    ).update(status=Job.Status.CANCELED, phase="", finished_at=timezone.now())
    job.refresh_from_db()
    return bool(updated)


def rerun_job(job: Job) -> bool:
    """Process a finished job again (the source is kept until retention ends)."""
    if not job.is_finished or job.files_purged_at or not job.source_path.exists():
        return False
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.QUEUED, phase="", progress=0, error="", finished_at=None,
        notified_at=None, attempts=0,
    )  # fmt: skip
    job.refresh_from_db()
    _enqueue(job)
    return True


def delete_job(job: Job) -> None:
    shutil.rmtree(job.directory, ignore_errors=True)
    job.delete()


# --- processing ----------------------------------------------------------------------------


class _Progress:
    """Writes phase and percent to the job, at most once a second; stops a canceled job."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.last = 0.0

    def __call__(self, phase: str, percent: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_EVERY_SECONDS:
            return
        self.last = now
        updated = Job.objects.filter(pk=self.job_id, status=Job.Status.PROCESSING).update(
            phase=phase, progress=int(max(0, min(percent, 100))), heartbeat_at=timezone.now()
        )
        if not updated:
            raise JobCanceled


def process_job(job_id: str) -> None:
    """Run a job from its source file. Idempotent: a redelivered task redoes the same work,
    overwriting the same files; a finished or canceled job is left alone."""
    claimed = Job.objects.filter(
        pk=job_id, status__in=[Job.Status.QUEUED, Job.Status.PROCESSING]
    ).update(
        status=Job.Status.PROCESSING, phase="analysing", progress=0, error="",
        started_at=timezone.now(), heartbeat_at=timezone.now(), attempts=F("attempts") + 1,
    )  # fmt: skip
    if not claimed:
        logger.info("job %s is finished or gone; nothing to do", job_id)
        return
    job = Job.objects.get(pk=job_id)
    progress = _Progress(job_id)
    try:
        _run(job, progress)
    except JobCanceled:
        logger.info("job %s was canceled while processing", job_id)
        return
    except media.InvalidAudio as exc:
        fail_job(job_id, str(exc))
        return
    finish_job(job_id)


def _run(job: Job, progress: _Progress) -> None:
    preset = PRESETS[job.preset]
    lim = limits()
    progress("analysing", 1, force=True)
    analysis = media.analyse(
        job.source_path, lim, progress=lambda fraction: progress("analysing", 1 + 39 * fraction)
    )
    waveform = analysis.waveform
    assert waveform is not None
    job.waveform_path("json").write_text(json.dumps(waveform.as_audiowaveform_json()))
    job.waveform_path("dat").write_bytes(waveform.as_audiowaveform_dat())
    image.render_png(waveform, job.waveform_path("png"))
    for kind in WAVEFORM_CONTENT_TYPES:
        job.waveform_path(kind).chmod(0o644)
    Job.objects.filter(pk=job.pk).update(
        source_metadata=analysis.source_metadata(),
        loudness_before=analysis.loudness.as_dict(),
        has_waveform=True,
    )
    for index, name in enumerate(preset.formats):
        share = 55 / len(preset.formats)
        progress(f"encoding {name}", 40 + share * index, force=True)
        fmt = encode.FORMATS[name]
        dest = job.directory / f"rendition.{fmt.extension}"
        rendition = encode.render(
            job.source_path, analysis, fmt, dest,
            target_lufs=preset.target_lufs, ceiling_dbtp=preset.ceiling_dbtp, limits=lim,
        )  # fmt: skip
        dest.chmod(0o644)
        Rendition.objects.update_or_create(
            job=job,
            format=name,
            defaults={
                "content_type": fmt.content_type,
                "file_name": dest.name,
                "size": dest.stat().st_size,
                "loudness": rendition.loudness.as_dict(),
                "gain_db": round(rendition.gain_db, 2),
                "within_target": rendition.within_target,
                "note": rendition.note,
            },
        )
    progress("finishing", 99, force=True)


def finish_job(job_id: str) -> None:
    done = Job.objects.filter(pk=job_id, status=Job.Status.PROCESSING).update(
        status=Job.Status.DONE, phase="", progress=100, finished_at=timezone.now()
    )
    if done:
        _notify(job_id)


def fail_job(job_id: str, reason: str) -> None:
    failed = Job.objects.filter(
        pk=job_id, status__in=[Job.Status.QUEUED, Job.Status.PROCESSING]
    ).update(status=Job.Status.FAILED, phase="", error=reason[:1000], finished_at=timezone.now())
    if failed:
        logger.info("job %s failed: %s", job_id, reason)
        _notify(job_id)


def _notify(job_id: str) -> None:
    from .tasks import send_job_notification

    transaction.on_commit(lambda: send_job_notification.delay(str(job_id)))


# --- email ---------------------------------------------------------------------------------


def send_job_notification(job_id: str) -> bool:
    """Email the owner that the job finished or failed; at most once per run of the job."""
    claimed = Job.objects.filter(
        pk=job_id, notified_at__isnull=True, status__in=[Job.Status.DONE, Job.Status.FAILED]
    ).update(notified_at=timezone.now())
    if not claimed:
        return False
    job = Job.objects.select_related("owner").get(pk=job_id)
    if not job.owner.email:
        return False
    context = {"job": job, "renditions": list(job.renditions.all()), "site_url": settings.SITE_URL}
    subject = (
        f"Your audio {'is ready' if job.status == Job.Status.DONE else 'could not be processed'}"
    )
    message = EmailMultiAlternatives(
        subject=f"{subject}: {job.original_name}"[:200],
        body=render_to_string("audio/email/job_finished.txt", context),
        to=[job.owner.email],
    )
    message.attach_alternative(
        render_to_string("audio/email/job_finished.html", context), "text/html"
    )
    try:
        message.send()
    except Exception:
        Job.objects.filter(pk=job_id).update(notified_at=None)  # let the retry send it
        raise
    return True


def send_daily_summary() -> int:
    """Yesterday's jobs, by status, to the admins (users with is_staff and an email)."""
    from django.contrib.auth import get_user_model

    since = timezone.now() - timedelta(days=1)
    counts = {status: 0 for status in Job.Status.values}
    for row in Job.objects.filter(created_at__gte=since).values("status"):
        counts[row["status"]] += 1
    failures = list(
        Job.objects.filter(status=Job.Status.FAILED, finished_at__gte=since).values_list(
            "id", "error"
        )[:50]
    )
    recipients = list(
        get_user_model().objects.filter(is_staff=True, is_active=True)
        .exclude(email="").values_list("email", flat=True)
    )  # fmt: skip
    if not recipients:
        return 0
    context = {"counts": counts, "failures": failures, "since": since}
    message = EmailMultiAlternatives(
        subject=f"Audio jobs, last 24 h: {sum(counts.values())} created, {counts['failed']} failed",
        body=render_to_string("audio/email/daily_summary.txt", context),
        to=recipients,
    )
    message.attach_alternative(
        render_to_string("audio/email/daily_summary.html", context), "text/html"
    )
    message.send()
    return len(recipients)


# --- housekeeping (beat) -------------------------------------------------------------------


def purge_expired_files(now: timezone.datetime | None = None) -> int:
    """Delete the files of jobs finished longer ago than AUDIO_RETENTION_DAYS; keep the rows."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.AUDIO_RETENTION_DAYS)
    expired = Job.objects.filter(finished_at__lt=cutoff, files_purged_at__isnull=True)
    count = 0
    for job in expired.iterator(chunk_size=200):
        shutil.rmtree(job.directory, ignore_errors=True)
        Job.objects.filter(pk=job.pk).update(files_purged_at=now, has_waveform=False)
        job.renditions.all().delete()
        count += 1
    return count


def recover_stuck_jobs(now: timezone.datetime | None = None) -> dict[str, int]:
    """Jobs with no progress past the deadline: requeue them, or fail them after max attempts."""
    now = now or timezone.now()
    deadline = now - timedelta(seconds=settings.AUDIO_STUCK_AFTER_S)
    stuck = Job.objects.filter(
        Q(status=Job.Status.PROCESSING, heartbeat_at__lt=deadline)
        | Q(status=Job.Status.QUEUED, created_at__lt=deadline, updated_at__lt=deadline)
    )
    result = {"requeued": 0, "failed": 0}
    for job in stuck:
        if job.attempts >= settings.AUDIO_MAX_ATTEMPTS:
            fail_job(str(job.pk), "processing stopped repeatedly; giving up")
            result["failed"] += 1
        else:
            Job.objects.filter(pk=job.pk).update(status=Job.Status.QUEUED, phase="")
            _enqueue(job)
            result["requeued"] += 1
    return result


def protected_path(path: Path) -> str:
    """The nginx-internal URL for a file under MEDIA_ROOT (X-Accel-Redirect)."""
    relative = path.resolve().relative_to(Path(settings.MEDIA_ROOT).resolve())
    return f"/protected-media/{relative.as_posix()}"
