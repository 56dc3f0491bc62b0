"""ASGI entry point: gunicorn + uvicorn workers in production, `uvicorn --reload` in development."""

import os

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, get_resolver, resolve

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")


class DjangoASGIHandler(ASGIHandler):
    """Django's ASGI handler, with a request for a sync view served by the sync middleware chain
    in one hop to its thread, as under WSGI.

    Under ASGI, Django runs every sync middleware hook (process_request, process_response...) and
    the sync view each in its own hop between the event loop and the request's thread: a dozen
    per request here, and most of the ASGI tax (benchmarks/web.py). Requests for async views (the
    event stream, the probes, the task round trip) keep the async chain, so a stream never holds
    a thread.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sync = BaseHandler()
        self._sync.load_middleware(is_async=False)

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        try:
            view = resolve(request.path_info).func
        except Resolver404:
            view = None
        if view is not None and iscoroutinefunction(view):
            return await super().get_response_async(request)
        return await sync_to_async(self._sync.get_response, thread_sensitive=True)(request)


def build_application() -> ASGIHandler:
    get_asgi_application()  # sets Django up
    application = DjangoASGIHandler()
    # Import the URLconf and every view now, while the worker boots, not in its first requests
    # (a reloaded worker would otherwise answer its first requests slowly).
    get_resolver().url_patterns  # noqa: B018
    return application


application = build_application()
