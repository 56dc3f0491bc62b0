"""WSGI entry point: not how the stack serves requests (core.asgi is), but the reference the web
benchmark measures the ASGI server against (benchmarks/web.py)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

application = get_wsgi_application()
