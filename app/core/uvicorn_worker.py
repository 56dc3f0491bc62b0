"""Gunicorn worker class for Django: uvicorn's worker with ASGI lifespan off (Django has none)."""

from uvicorn_worker import UvicornWorker


class DjangoUvicornWorker(UvicornWorker):
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "lifespan": "off"}
