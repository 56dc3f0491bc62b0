"""The worker's side of a job: claim the run, keep its heartbeat, process into the run's private
directory, and commit the result only while the run is still ours.

A run belongs to the task named in `Job.task_id`. That task may claim a queued job, or take a
processing one over once its heartbeat is older than AUDIO_HEARTBEAT_TIMEOUT_S (its earlier
delivery died: Celery redelivers a task whose worker process was lost). Any other task, a
second delivery while the first is alive, or a job finished, canceled or deleted meanwhile,
leaves the job alone. Every write of a run is conditional on that ownership.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from django import db
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from .. import metrics
from ..models import Job, JobQuerySet, Rendition
from ..presets import PRESETS
from ..processing import encode, image, media
from . import events, media_store, notifications
from .jobs import OUT_OF_SPACE, limits

logger = logging.getLogger(__name__)
PROGRESS_EVERY_SECONDS = 1.0
OUT_OF_SPACE_REASON = "the server ran out of storage space while processing; re-run the job later"


class RunLost(Exception):
    """The run is no longer this task's: canceled, deleted or taken over."""


class Busy(Exception):
    """Another delivery of this task may still be running the job; try again in `retry_in` s."""

    def __init__(self, retry_in: float) -> None:
        super().__init__(f"the run may still be alive; retry in {retry_in:.0f}s")
        self.retry_in = retry_in


def process_job(job_id: str, task_id: str) -> None:
    """Run the job if this task owns it; raises Busy when it must wait to take it over."""
    job = claim(job_id, task_id)
    if job is None:
        return
    try:
        with Run(job, task_id) as run:
            media_store.fetch(job.source_path)
            result = _process(job, run)
            _commit(job, run, result)
    except (RunLost, encode.Stopped):
        _give_up(job_id, task_id)
    except media.InvalidAudio as exc:
        fail_run(job_id, task_id, str(exc))
    except MemoryError:  # the worker's own address-space limit (AUDIO_WORKER_MEMORY_MB)
        fail_run(
            job_id,
            task_id,
            "decoding the audio needed more than the worker's "
            f"{settings.AUDIO_WORKER_MEMORY_MB} MB of memory",
        )
    except OSError as exc:
        if exc.errno not in OUT_OF_SPACE:
            raise
        logger.error("job %s: media storage is full (%s)", job_id, exc)
        fail_run(job_id, task_id, OUT_OF_SPACE_REASON)


def claim(job_id: str, task_id: str) -> Job | None:
    """Make this task's run `processing`; None when there is nothing for it to do."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.AUDIO_HEARTBEAT_TIMEOUT_S)
    ours = Job.objects.filter(pk=job_id, task_id=task_id)
    claimable = ours.filter(
        Q(status=Job.Status.QUEUED)
        | Q(status=Job.Status.PROCESSING, heartbeat_at__isnull=True)
        | Q(status=Job.Status.PROCESSING, heartbeat_at__lt=stale)
    )
    claimed = claimable.filter(attempts__lt=settings.AUDIO_MAX_ATTEMPTS).transition(
        status=Job.Status.PROCESSING,
        phase="analysing",
        progress=0,
        error="",
        started_at=now,
        heartbeat_at=now,
        attempts=F("attempts") + 1,
    )
    if claimed:
        job = Job.objects.get(pk=job_id)
        logger.info("job %s: run claimed by task %s (attempt %d)", job_id, task_id, job.attempts)
        events.job_changed(job_id)
        _remove_other_runs(job, task_id)
        return job
    if claimable.exists():
        fail_run(
            job_id,
            task_id,
            f"processing stopped {settings.AUDIO_MAX_ATTEMPTS} times "
            "before finishing (the worker died); giving up",
        )
        return None
    heartbeat = ours.filter(status=Job.Status.PROCESSING).values_list("heartbeat_at", flat=True)
    if heartbeat:
        # Not None: a processing run without a heartbeat was claimable above.
        age = (now - cast(datetime, heartbeat[0])).total_seconds()
        raise Busy(max(1.0, settings.AUDIO_HEARTBEAT_TIMEOUT_S - age + 1))
    state = Job.objects.filter(pk=job_id).values("status", "task_id").first()
    logger.info(
        "job %s: task %s has nothing to do (%s)",
        job_id,
        task_id,
        "job deleted"
        if state is None
        else f"job {state['status']}, run owned by {state['task_id'] or 'no task'}",
    )
    return None


def _remove_other_runs(job: Job, task_id: str) -> None:
    """Working directories of runs that died before cleaning up (a superseded run still alive
    fails to write and leaves the job alone)."""
    for directory in job.directory.glob("run-*"):
        if directory != job.run_directory(task_id):
            shutil.rmtree(directory, ignore_errors=True)


class Run:
    """The owned run: a heartbeat thread, progress at most once a second, a private directory
    that is always removed at the end (the result has moved out of it by then)."""

    def __init__(self, job: Job, task_id: str) -> None:
        self.job = job
        self.task_id = task_id
        self.directory = job.run_directory(task_id)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._last_progress = 0.0
        self._heartbeat = threading.Thread(target=self._beat, name="job-heartbeat", daemon=True)

    def owned(self) -> JobQuerySet:
        """This job, while this task's run is processing it."""
        return Job.objects.filter(
            pk=self.job.pk, task_id=self.task_id, status=Job.Status.PROCESSING
        )

    def __enter__(self) -> Run:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._heartbeat.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._heartbeat.join(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _beat(self) -> None:
        """While the run's task still names it, even canceled, its heartbeat says it is alive:
        a re-run waits for it to stop (or for its worker to be dead), never overlaps it."""
        try:
            while not self._stop.wait(settings.AUDIO_HEARTBEAT_S):
                try:
                    if not self.owned().update(heartbeat_at=timezone.now()):
                        self.lost.set()  # the run notices within a second and lets go
                        Job.objects.filter(pk=self.job.pk, task_id=self.task_id).update(
                            heartbeat_at=timezone.now()
                        )
                except db.Error as exc:  # a blip; the next beat or the run's write will tell
                    logger.warning("job %s: heartbeat not recorded (%s)", self.job.pk, exc)
                    connection.close()
        finally:
            connection.close()  # this thread's own connection

    def progress(self, phase: str, percent: float, force: bool = False) -> None:
        if self.lost.is_set():
            raise RunLost
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_EVERY_SECONDS:
            return
        self._last_progress = now
        if not self.owned().transition(phase=phase, progress=int(max(0, min(percent, 100)))):
            self.lost.set()
            raise RunLost
        events.job_changed(self.job.pk)


@dataclass
class _Result:
    analysis: media.Analysis
    renditions: dict[str, encode.Rendition]


def _process(job: Job, run: Run) -> _Result:
    preset = PRESETS[job.preset]
    lim = limits()
    run.progress("analysing", 1, force=True)
    analysis = media.analyse(
        job.source_path, lim, progress=lambda fraction: run.progress("analysing", 1 + 39 * fraction)
    )
    waveform = analysis.waveform
    assert waveform is not None
    (run.directory / "waveform.json").write_text(json.dumps(waveform.as_audiowaveform_json()))
    (run.directory / "waveform.dat").write_bytes(waveform.as_audiowaveform_dat())
    image.render_png(waveform, run.directory / "waveform.png")
    renditions = {}
    for index, name in enumerate(preset.formats):
        run.progress(f"encoding {name}", 40 + 55 / len(preset.formats) * index, force=True)
        fmt = encode.FORMATS[name]
        renditions[name] = encode.render(
            job.source_path,
            analysis,
            fmt,
            run.directory / f"rendition.{fmt.extension}",
            target_lufs=preset.target_lufs,
            ceiling_dbtp=preset.ceiling_dbtp,
            limits=lim,
            stop=run.lost.is_set,  # a canceled run kills its encoder within half a second
        )
    run.progress("finishing", 99, force=True)
    return _Result(analysis, renditions)


def _commit(job: Job, run: Run, result: _Result) -> None:
    """Move the run's files into place and record them, atomically with the ownership check."""
    with transaction.atomic():
        if not run.owned().select_for_update().exists():
            raise RunLost
        for path in run.directory.iterdir():
            path.chmod(0o644)  # nginx's workers (another user) send them
            path.replace(job.directory / path.name)
            media_store.publish(job.directory / path.name)
        job.renditions.exclude(format__in=result.renditions).delete()
        for name, rendition in result.renditions.items():
            Rendition.objects.update_or_create(
                job=job,
                format=name,
                defaults={
                    "content_type": rendition.format.content_type,
                    "file_name": rendition.path.name,
                    "size": (job.directory / rendition.path.name).stat().st_size,
                    "loudness": rendition.loudness.as_dict(),
                    "gain_db": round(rendition.gain_db, 2),
                    "within_target": rendition.within_target,
                    "note": rendition.note,
                },
            )
        run.owned().transition(
            status=Job.Status.DONE,
            phase="",
            progress=100,
            finished_at=timezone.now(),
            task_id="",
            source_metadata=result.analysis.source_metadata(),
            loudness_before=result.analysis.loudness.as_dict(),
            has_waveform=True,
        )
        events.job_changed(job.pk)
        notifications.notify_finished(job.pk)
    media_store.remove_local(job.directory)
    metrics.run_finished(job.preset, Job.Status.DONE, job.started_at, result.analysis.duration_s)
    logger.info("job %s: done (task %s)", job.pk, run.task_id)


def fail_run(job_id: uuid.UUID | str, task_id: str, reason: str) -> bool:
    """End the task's run as failed, with the reason for its owner (no-op if not its run)."""
    with transaction.atomic():
        failed = Job.objects.filter(pk=job_id, task_id=task_id, status__in=Job.ACTIVE).transition(
            status=Job.Status.FAILED,
            phase="",
            error=reason[:1000],
            finished_at=timezone.now(),
            task_id="",
        )
        if failed:
            events.job_changed(job_id)
            notifications.notify_finished(job_id)
    if failed:
        row: Mapping[str, Any] = (
            Job.objects.filter(pk=job_id).values("preset", "started_at").first() or {}
        )
        metrics.run_finished(row.get("preset", ""), Job.Status.FAILED, row.get("started_at"))
        logger.info("job %s: failed (task %s): %s", job_id, task_id, reason)
    return bool(failed)


def release_run(job_id: str, task_id: str) -> None:
    """Hand a run back to the queue before the same task retries after a transient error."""
    try:
        Job.objects.filter(pk=job_id, task_id=task_id, status=Job.Status.PROCESSING).transition(
            status=Job.Status.QUEUED, phase="", heartbeat_at=None
        )
    except DatabaseError as exc:  # the retry takes the run over once its heartbeat is stale
        logger.warning("job %s: run not released (%s)", job_id, exc)


def _give_up(job_id: str, task_id: str) -> None:
    """The run was canceled or taken from us: let go of it, so a re-run may start."""
    Job.objects.filter(pk=job_id, task_id=task_id, status=Job.Status.CANCELED).update(task_id="")
    logger.info("job %s: task %s stopped (canceled, deleted or superseded)", job_id, task_id)
