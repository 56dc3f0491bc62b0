"""Gunicorn worker class for Django: uvicorn's worker with ASGI lifespan off (Django has none),
and a graceful shutdown that first tells long-lived responses to end (core.lifecycle); without
that, an open event stream keeps an old worker alive until Gunicorn's graceful timeout kills it."""

import asyncio
import sys
from typing import ClassVar

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from core import lifecycle

#: Between no longer accepting and closing idle connections: a connection accepted just before
#: has its request read and started by then, so it is answered, not reset.
ACCEPTED_GRACE_S = 0.5


class _Server(Server):
    async def shutdown(self, sockets: list | None = None) -> None:
        lifecycle.begin_shutdown()
        # uvicorn closes every connection with no request in progress at once; one accepted a
        # moment ago whose request is still in its socket buffer is then reset (nginx: 502).
        # Stop accepting first (the other workers take new connections), let those requests
        # start, then shut down as uvicorn does.
        for server in self.servers:
            server.close()
        await asyncio.sleep(ACCEPTED_GRACE_S)
        await super().shutdown(sockets=sockets)


class DjangoUvicornWorker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, object]] = {**UvicornWorker.CONFIG_KWARGS, "lifespan": "off"}

    async def _serve(self) -> None:  # UvicornWorker._serve (uvicorn-worker 0.4) with _Server
        self.config.app = self.wsgi
        server = _Server(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
