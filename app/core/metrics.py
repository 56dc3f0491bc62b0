"""Prometheus exposition (README, "Metrics").

web and events: GET /metrics on their own port (nginx never routes it: it answers 404 outside).
Gunicorn's workers are separate processes, so prometheus_client runs in multiprocess mode: each
process writes its samples to files in PROMETHEUS_MULTIPROC_DIR (the start scripts give each
server a fresh one) and a scrape adds them up. The worker: its main process serves the same on
WORKER_METRICS_PORT for every pool process (core.celery starts it).

What a scrape of web returns: django-prometheus's request, latency and query metrics, and the
jobs and broker state read at that moment (audio.metrics.JobsCollector).
"""

from __future__ import annotations

import logging
import os

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
    start_http_server,
)

logger = logging.getLogger(__name__)


def process_registry() -> CollectorRegistry:
    """What every process of this server counted: the multiprocess files when there are several
    (Gunicorn, the Celery pool), else this process's own registry."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def _exposition() -> bytes:
    from audio.metrics import JobsCollector

    return generate_latest(process_registry()) + generate_latest(_state_registry(JobsCollector))


async def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics, answered like the health probes (health.middleware): before host validation
    and the HTTPS redirect, as Prometheus reaches web by its internal address over plain HTTP."""
    body = await sync_to_async(_exposition)()  # reads the database and the broker
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def _state_registry(collector: type) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector())
    return registry


def serve_worker_metrics(port: int, address: str) -> None:
    """The Celery worker's endpoint, from its main process (its pool processes are forked after
    and write their samples into the shared directory). A port already taken costs the metrics,
    not the worker: jobs still run, and Prometheus shows the target down."""
    try:
        start_http_server(port, addr=address, registry=process_registry())
    except OSError as exc:
        logger.error("WORKER_METRICS_PORT=%s: metrics not served (%s)", port, exc)
