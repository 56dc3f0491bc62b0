"""Answer liveness and readiness probes, and Prometheus's scrape, before host validation,
redirects and sessions.

Probes come from the orchestrator on whatever address it uses (127.0.0.1, a container IP), not
one of ALLOWED_HOSTS, and must not be redirected to HTTPS or touch the session store; so does
Prometheus (nginx never routes /metrics: it is reached on web's own port only).
"""

from collections.abc import Awaitable
from typing import cast

from asgiref.sync import async_to_sync
from django.http import HttpRequest, HttpResponseBase

from core.metrics import metrics_view
from core.middleware import HybridMiddleware

from . import views

PROBES = {"/healthz": views.healthz, "/readyz": views.readyz, "/metrics": metrics_view}


class HealthCheckMiddleware(HybridMiddleware):
    """Async under ASGI (core.asgi sends the probes down the async chain); sync in a sync chain
    (web's WSGI workers, and core.asgi's chain for sync views, which probes never reach)."""

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        probe = PROBES.get(request.path_info)
        if probe is not None:
            return async_to_sync(probe)(request)
        return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        probe = PROBES.get(request.path_info)
        if probe is not None:
            return await probe(request)
        return await cast(Awaitable[HttpResponseBase], self.get_response(request))
