"""ASGI entry point: gunicorn + uvicorn workers in production, `uvicorn --reload` in development."""

import os

from django.core.asgi import get_asgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

application = get_asgi_application()

# Import the URLconf and every view now, while the worker boots, not in its first requests (a
# reloaded worker would otherwise answer its first requests slowly).
get_resolver().url_patterns  # noqa: B018
