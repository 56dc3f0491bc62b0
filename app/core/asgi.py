"""ASGI entry point: gunicorn + uvicorn workers in production, `uvicorn --reload` in development."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

application = get_asgi_application()
