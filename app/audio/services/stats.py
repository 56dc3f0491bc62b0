"""Selectors for the operator's summary (`manage.py stats`): jobs, the broker's queue, work done,
users and storage. Read-only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, DurationField, ExpressionWrapper, F, FloatField, Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django.utils import timezone

from core import broker

from ..models import Job, Rendition


def jobs_by_status(since: datetime | None = None) -> dict[str, int]:
    """Jobs per status (every status, zeros included); `since`: created since then."""
    jobs = Job.objects.all() if since is None else Job.objects.filter(created_at__gte=since)
    counts = dict.fromkeys(Job.Status.values, 0)
    for row in jobs.order_by().values("status").annotate(n=Count("pk")):
        counts[row["status"]] = row["n"]
    return counts


def queue_depth(queues: tuple[str, ...] | None = None) -> dict[str, int]:
    """Tasks waiting in the broker's queues (with kombu's priority lists), and deliveries a worker
    holds unacknowledged (running, or reserved by its prefetch; all queues). Raises
    redis.RedisError when the broker cannot be read."""
    queues = queues or (settings.CELERY_TASK_DEFAULT_QUEUE,)
    separator = broker.PRIORITY_SEPARATOR
    keys = [
        key
        for queue in queues
        for key in (queue, *(f"{queue}{separator}{step}" for step in broker.PRIORITY_STEPS))
    ]
    with redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=5) as client:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        pipe.hlen(broker.UNACKED)
        *lengths, unacked = pipe.execute()
    return {"waiting": sum(lengths), "unacknowledged": unacked}


def work_done(since: datetime | None = None) -> dict[str, float | int]:
    """Runs finished (done or failed) since `since` (or ever): how many, the seconds their last
    attempt took from claim to finish, and the seconds of audio the done ones processed."""
    finished = Job.objects.filter(
        status__in=(Job.Status.DONE, Job.Status.FAILED),
        started_at__isnull=False,
        finished_at__isnull=False,
    )
    if since is not None:
        finished = finished.filter(finished_at__gte=since)
    took = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    runs = finished.aggregate(processing=Sum(took))
    duration = Cast(KeyTextTransform("duration_s", "source_metadata"), FloatField())
    done = finished.filter(status=Job.Status.DONE)
    audio = done.aggregate(audio=Sum(duration))
    return {
        "runs": finished.count(),
        "done": done.count(),
        "processing_s": round((runs["processing"] or timedelta()).total_seconds(), 3),
        "audio_s": round(audio["audio"] or 0.0, 3),
    }


def users_summary(since: datetime) -> dict[str, int]:
    users = get_user_model().objects
    return {
        "total": users.count(),
        "active": users.filter(is_active=True).count(),
        "with_jobs_since": Job.objects.filter(created_at__gte=since)
        .order_by()
        .values("owner")
        .distinct()
        .count(),
    }


def storage_recorded() -> dict[str, int]:
    """Bytes of sources and renditions the database records for jobs that keep their files."""
    kept = Job.objects.filter(files_purged_at__isnull=True)
    sources = kept.aggregate(total=Sum("source_size"))["total"] or 0
    renditions = (
        Rendition.objects.filter(job__files_purged_at__isnull=True).aggregate(total=Sum("size"))[
            "total"
        ]
        or 0
    )
    return {"sources": sources, "renditions": renditions, "total": sources + renditions}


def job_directories() -> list[Path]:
    """The jobs' directories under MEDIA_ROOT (with `directory_bytes`: the storage on disk,
    waveforms and leftover run directories included, which the database does not record)."""
    root = Path(settings.MEDIA_ROOT) / "jobs"
    try:
        return [entry for entry in root.iterdir() if entry.is_dir()]
    except FileNotFoundError:
        return []


def directory_bytes(directory: Path) -> int:
    """Bytes of the files under `directory` (what they occupy in their files' sizes)."""
    return sum(path.stat().st_size for path in _files(directory))


def _files(directory: Path) -> Iterator[Path]:
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                yield path


def summary(now: datetime | None = None) -> dict[str, object]:
    """Everything `manage.py stats` shows but the broker and the disk walk (read separately, as
    either may fail or take long)."""
    now = now or timezone.now()
    day_ago = now - timedelta(days=1)
    return {
        "generated_at": now.isoformat(),
        "jobs": {"total": jobs_by_status(), "created_last_24h": jobs_by_status(day_ago)},
        "work": {"last_24h": work_done(day_ago), "total": work_done()},
        "users": users_summary(day_ago),
        "storage_recorded_bytes": storage_recorded(),
    }
