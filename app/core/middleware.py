"""Middleware shared by the project: a base for middleware that runs sync or async as the chain
it is in, and a database outage answered 503 with Retry-After (an honest "try again"), not a 500."""

import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.utils.deprecation import MiddlewareMixin

logger = logging.getLogger(__name__)
RETRY_AFTER_S = 5


class HybridMiddleware:
    """Sync or async, as the chain it is in."""

    async_capable = True
    sync_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]],
    ) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(cast(Callable[..., Any], self))  # subclasses define __call__


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.warning(
            "database unavailable for %s %s: %s",
            request.method,
            request.path,
            " ".join(str(exception).split())[:300],
        )
        return JsonResponse(
            {"detail": "the service is briefly unavailable; try again in a few seconds"},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
