"""A database outage answers 503 with Retry-After (an honest "try again"), not a 500."""

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

logger = logging.getLogger(__name__)
RETRY_AFTER_S = 5


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.warning("database unavailable for %s %s: %s", request.method, request.path,
                       " ".join(str(exception).split())[:300])  # fmt: skip
        return JsonResponse(
            {"detail": "the service is briefly unavailable; try again in a few seconds"},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
