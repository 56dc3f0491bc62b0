"""Prometheus metrics of the audio workload (README, "Metrics").

Counted by the worker as runs finish (its pool processes write them to PROMETHEUS_MULTIPROC_DIR,
its main process serves them: core.metrics): runs finished by preset and outcome, their processing
time, and the seconds of audio processed. Read at each scrape of web's /metrics (JobsCollector):
jobs by status, the age of the oldest queued job and the broker's queue, from the database and
Redis as they are at that moment, so they are right whichever process changed them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime

import redis
from django.db import DatabaseError
from django.db.models import Min
from django.utils import timezone
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .models import Job
from .services import stats

logger = logging.getLogger(__name__)

RUNS_FINISHED = Counter(
    "audio_runs_finished", "Job runs finished, by preset and outcome", ["preset", "status"]
)
PROCESSING_SECONDS = Histogram(
    "audio_run_processing_seconds",
    "Seconds from a run's claim to its end, by preset and outcome",
    ["preset", "status"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
)
AUDIO_SECONDS = Counter(
    "audio_processed_audio_seconds", "Seconds of audio in the jobs done, by preset", ["preset"]
)


def run_finished(
    preset: str, status: str, started_at: datetime | None, audio_seconds: float = 0.0
) -> None:
    RUNS_FINISHED.labels(preset, status).inc()
    if started_at is not None:
        elapsed = (timezone.now() - started_at).total_seconds()
        PROCESSING_SECONDS.labels(preset, status).observe(max(elapsed, 0.0))
    if audio_seconds > 0:
        AUDIO_SECONDS.labels(preset).inc(audio_seconds)


class JobsCollector(Collector):
    """State read at scrape time. A family whose source is down is left out (and logged): the
    scrape still answers, and `up`/the exporters' own metrics show which part is down."""

    def collect(self) -> Iterator[Metric]:
        try:
            by_status = stats.jobs_by_status()
            oldest = Job.objects.filter(status=Job.Status.QUEUED).aggregate(t=Min("created_at"))
        except DatabaseError as exc:
            logger.warning("metrics: jobs not read (%s)", exc)
        else:
            jobs = GaugeMetricFamily("audio_jobs", "Jobs by status", labels=["status"])
            for status, count in by_status.items():
                jobs.add_metric([status], count)
            yield jobs
            age = (timezone.now() - oldest["t"]).total_seconds() if oldest["t"] else 0.0
            yield GaugeMetricFamily(
                "audio_oldest_queued_job_age_seconds",
                "Age of the oldest job still queued (0 when none is)",
                value=age,
            )
        try:
            depth = stats.queue_depth()
        except redis.RedisError as exc:
            logger.warning("metrics: broker queue not read (%s)", exc)
        else:
            queue = GaugeMetricFamily(
                "celery_queue_tasks",
                "Tasks in the broker: waiting in the queue, or delivered and unacknowledged",
                labels=["state"],
            )
            for state, count in depth.items():
                queue.add_metric([state], count)
            yield queue
