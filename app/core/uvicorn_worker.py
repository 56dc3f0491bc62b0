"""Gunicorn worker class for Django: uvicorn's worker with ASGI lifespan off (Django has none)."""

from typing import ClassVar

from uvicorn_worker import UvicornWorker


class DjangoUvicornWorker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, object]] = {**UvicornWorker.CONFIG_KWARGS, "lifespan": "off"}
