"""What a log line is about: the request (nginx's X-Request-Id), the user, the Celery task and the
audio job. Each lives in a context variable, set where it becomes known (RequestIdMiddleware,
authentication, the task signals in core.celery, the job tasks), and ContextFilter adds them
to every log record, so each JSON log line carries them (README, "Logs").

The request id also rides along in the headers of every task a request enqueues: the worker's
lines for that task carry the id of the request that caused it.
"""

import contextvars
import logging
import re
import uuid
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from django.http import HttpRequest, HttpResponseBase

from core.middleware import HybridMiddleware

if TYPE_CHECKING:  # auth's models cannot load before the app registry (logging config imports this)
    from django.contrib.auth.models import AnonymousUser, User

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
user_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("user_id", default=None)
task_id: contextvars.ContextVar[str] = contextvars.ContextVar("task_id", default="")
job_id: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="")

FIELDS: dict[str, contextvars.ContextVar[Any]] = {
    "request_id": request_id,
    "user_id": user_id,
    "task_id": task_id,
    "job_id": job_id,
}
# What a request id may look like: nginx's are 32 hex digits; a direct client's must not be able
# to forge log lines or flood them.
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
TASK_HEADER = "request_id"  # the task message header that carries it


def accept_request_id(value: str | None) -> str:
    """The proxy's id if it looks like one, else a new one."""
    return value if value and _VALID_ID.fullmatch(value) else uuid.uuid4().hex


@contextmanager
def bound(**values: object) -> Iterator[None]:
    """Set some of the fields for the block (a task, a job), then put them back."""
    tokens = [(FIELDS[name], FIELDS[name].set(value)) for name, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Adds the fields to every record (empty when unknown), for the formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in FIELDS.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


class RequestIdMiddleware(HybridMiddleware):
    """Binds the request id (nginx's X-Request-Id, or a new one) for the request and returns it
    in the response."""

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        rid = accept_request_id(request.headers.get("X-Request-Id"))
        with bound(request_id=rid, user_id=None):
            response = cast(HttpResponseBase, self.get_response(request))  # a sync chain
        response["X-Request-Id"] = rid
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        rid = accept_request_id(request.headers.get("X-Request-Id"))
        with bound(request_id=rid, user_id=None):
            response = await cast(Awaitable[HttpResponseBase], self.get_response(request))
        response["X-Request-Id"] = rid
        return response


class UserIdMiddleware(HybridMiddleware):
    """Binds the session's user (after AuthenticationMiddleware); token users are bound by
    their authentication class."""

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        bind_user(request.user)
        return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        bind_user(await request.auser())
        return await cast(Awaitable[HttpResponseBase], self.get_response(request))


def bind_user(user: "User | AnonymousUser") -> None:
    if getattr(user, "is_authenticated", False):
        user_id.set(user.pk)
