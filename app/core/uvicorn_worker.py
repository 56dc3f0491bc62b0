"""Gunicorn worker class for Django: uvicorn's worker with ASGI lifespan off (Django has none),
and a graceful shutdown that first tells long-lived responses to end (core.lifecycle); without
that, an open event stream keeps an old worker alive until Gunicorn's graceful timeout kills it."""

import sys
from typing import ClassVar

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from core import lifecycle


class _Server(Server):
    async def shutdown(self, sockets: list | None = None) -> None:
        lifecycle.begin_shutdown()
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
