"""Server-rendered pages, and the server-sent events stream of the user's jobs."""

import weakref

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.db import connections
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, render

from . import streams
from .models import Job
from .presets import PRESETS
from .services.events import EVENT_FIELDS, encode


@login_required
def jobs(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "audio/jobs.html",
        {
            "jobs": Job.objects.owned_by(request.user)[:50],
            "presets": PRESETS.values(),
            "max_bytes": settings.UPLOAD_MAX_BYTES,
            "max_mb": settings.UPLOAD_MAX_MB,
        },
    )


@login_required
def job(request: HttpRequest, pk: str) -> HttpResponse:
    job = get_object_or_404(Job.objects.owned_by(request.user), pk=pk)
    return render(request, "audio/job.html", {"job": job, "renditions": job.renditions.all()})


class EventStreamResponse(StreamingHttpResponse):
    """Frees the stream's slot when Django closes the response, even if it never streamed."""

    def __init__(self, stream: streams.Stream, snapshot: list[str]) -> None:
        super().__init__(stream.events(snapshot), content_type="text/event-stream")
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"  # nginx passes each event on at once
        self._stream = stream

    def close(self) -> None:
        self._stream.release()
        super().close()


def _snapshot(user: object) -> list[str]:
    """The user's latest jobs, then the connection goes back to the pool before the wait."""
    try:
        rows = Job.objects.owned_by(user).order_by("-updated_at").values(*EVENT_FIELDS)[:50]
        return [encode(row) for row in reversed(rows)]
    finally:
        connections["default"].close()


async def events(request: HttpRequest) -> HttpResponseBase:
    """text/event-stream: the user's jobs now, then one `job` event whenever one changes."""
    if not isinstance(request, ASGIRequest):
        # A WSGI worker would serve the stream on its only thread for minutes: nginx sends
        # streams to the events process (ASGI); a client that came here directly polls.
        return JsonResponse(
            {"detail": "event streams are served by the events process, not this server"},
            status=503,
            headers={"Retry-After": "30"},
        )
    user = await request.auser()
    if not user.is_authenticated:
        return HttpResponse(status=401)
    stream = streams.Stream(user.pk)
    try:
        await stream.acquire()  # subscribed before the snapshot: no change falls in between
        snapshot = await sync_to_async(_snapshot)(user)
    except streams.TooManyStreams as exc:
        stream.release()
        return JsonResponse({"detail": str(exc)}, status=429, headers={"Retry-After": "30"})
    except streams.Unavailable as exc:
        stream.release()
        return JsonResponse({"detail": str(exc)}, status=503, headers={"Retry-After": "5"})
    except BaseException:
        stream.release()
        raise
    response = EventStreamResponse(stream, snapshot)
    # Django closes the response when it was sent; if the client left while the middleware
    # still held it, only this frees the slot (release is idempotent).
    weakref.finalize(response, stream.release)
    return response
