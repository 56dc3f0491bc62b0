"""ASGI entry point: gunicorn + uvicorn workers in production, `uvicorn --reload` in development."""

import os
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler
from django.urls import get_resolver, reverse

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")


class PooledThreadsASGIHandler(ASGIHandler):
    """Django's ASGI handler with the sync parts of a request (sync middleware, views, the ORM)
    run on a few long-lived threads instead of a thread started and joined per request.

    Django enters a new ThreadSensitiveContext for every request, so asgiref creates a one-thread
    executor for it and shuts it down at the end; on a small request that costs more than the
    request (benchmarks/web.py). Here a request borrows one of `threads` single-thread executors
    (asgiref >= 3.13 lets a context bring its own) and gives it back. Each thread keeps Django's
    thread-local state as one request thread would; its database connection goes back to the
    pool at the end of every request as before. A request that finds every thread busy, and the
    long-lived event streams (which would hold a thread for minutes), get a thread of their own,
    as Django does.
    """

    def __init__(self, threads: int, own_thread_paths: tuple[str, ...]) -> None:
        super().__init__()
        self._idle = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"django-sync-{i}")
            for i in range(threads)
        ]
        self._own_thread_paths = own_thread_paths

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if (
            scope["type"] != "http"
            or not self._idle
            or scope["path"].startswith(self._own_thread_paths)
        ):
            await super().__call__(scope, receive, send)
            return
        executor = self._idle.pop()  # one event loop per process: no lock needed
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self._idle.append(executor)


def build_application() -> ASGIHandler:
    """WEB_SYNC_THREADS=0 keeps Django's own handler (a thread per request)."""
    from django.conf import settings

    application = get_asgi_application()  # sets Django up
    if settings.WEB_SYNC_THREADS:
        application = PooledThreadsASGIHandler(
            settings.WEB_SYNC_THREADS, own_thread_paths=(reverse("audio:events"),)
        )
    # Import the URLconf and every view now, while the worker boots, not in its first requests
    # (a reloaded worker would otherwise answer its first requests slowly).
    get_resolver().url_patterns  # noqa: B018
    return application


application = build_application()
