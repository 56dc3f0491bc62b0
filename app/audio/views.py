"""Server-rendered pages, and the server-sent events stream of the user's jobs."""

import asyncio
import json
import time
from collections.abc import AsyncIterator

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render

from .models import Job
from .presets import PRESETS

EVENT_FIELDS = (
    "id",
    "original_name",
    "preset",
    "status",
    "phase",
    "progress",
    "error",
    "created_at",
)
STREAM_SECONDS = 300  # then the browser reconnects (EventSource does so by itself)


@login_required
def jobs(request: HttpRequest) -> HttpResponse:
    return render(request, "audio/jobs.html", {
        "jobs": Job.objects.filter(owner=request.user)[:50],
        "presets": PRESETS.values(),
        "max_bytes": settings.UPLOAD_MAX_BYTES,
        "max_mb": settings.UPLOAD_MAX_MB,
    })  # fmt: skip


@login_required
def job(request: HttpRequest, pk: str) -> HttpResponse:
    job = get_object_or_404(Job, pk=pk, owner=request.user)
    return render(request, "audio/job.html", {"job": job, "renditions": job.renditions.all()})


async def events(request: HttpRequest) -> HttpResponse:
    """text/event-stream: one `job` event whenever one of the user's jobs changes."""
    user = await request.auser()
    if not user.is_authenticated:
        return HttpResponse(status=401)

    async def stream() -> AsyncIterator[str]:
        seen: dict[str, str] = {}
        started = time.monotonic()
        yield "retry: 3000\n\n"
        while time.monotonic() - started < STREAM_SECONDS:
            rows = Job.objects.filter(owner=user).order_by("-updated_at").values(*EVENT_FIELDS)[:50]
            async for row in rows:
                payload = json.dumps(row, cls=DjangoJSONEncoder)
                key = str(row["id"])
                if seen.get(key) != payload:
                    seen[key] = payload
                    yield f"event: job\ndata: {payload}\n\n"
            yield ": keep-alive\n\n"
            await asyncio.sleep(1)

    response = StreamingHttpResponse(stream(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx passes each event on at once
    return response
