"""The web server's own configuration, without the stack: the ASGI handler takes a sync view's
request to its thread once, not once per middleware; an unknown WEB_SERVER is refused by name."""

import asyncio

import pytest
from asgiref.sync import SyncToAsync
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler

from core.asgi import DjangoASGIHandler
from tests.ports import free_port
from tests.servers import start_server
from tests.stack_env import STACK_ENV


def hops(handler: object, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """(status, hops from the event loop to a thread) of one request through `handler`."""
    count = 0
    original = SyncToAsync.__call__

    async def counting(self: SyncToAsync, *args: object, **kwargs: object) -> object:
        nonlocal count
        count += 1
        return await original(self, *args, **kwargs)

    async def request() -> int:
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "scheme": "https",
            "headers": [(b"host", b"localhost"), *headers],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 443),
        }
        app = ApplicationCommunicator(handler, scope)
        await app.send_input({"type": "http.request", "body": b""})
        start = await app.receive_output(10)
        await app.receive_output(10)  # the body
        return start["status"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SyncToAsync, "__call__", counting)
        status = asyncio.run(request())
    return status, count


@pytest.mark.django_db
def test_a_sync_view_takes_one_hop_to_its_thread_not_one_per_middleware(settings) -> None:
    settings.DIAGNOSTICS_TOKEN = "hops"
    token = [(b"x-diagnostics-token", b"hops")]
    ours = hops(DjangoASGIHandler(), "/diagnostics/request", token)
    djangos = hops(ASGIHandler(), "/diagnostics/request", token)
    assert ours[0] == djangos[0] == 200
    # Ours: the request_started/finished receivers, the sync chain and view, closing the
    # response. Django's own: one per sync middleware hook besides.
    assert ours[1] <= 4 and djangos[1] >= ours[1] + 5, (ours, djangos)
    assert hops(DjangoASGIHandler(), "/healthz", [])[0] == 200  # async views: the async chain


def test_an_unknown_server_is_refused_by_name() -> None:
    env = {**STACK_ENV, "WEB_PORT": str(free_port()), "WEB_SERVER": "wsgi2"}
    process = start_server(env)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode != 0
    assert "WEB_SERVER='wsgi2': must be one of wsgi, asgi" in output, output
