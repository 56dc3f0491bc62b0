"""Gunicorn settings for the production web and events processes; every knob comes from the
environment.

WEB_SERVER picks the server (README, "Web servers"):
  wsgi  Django's WSGI handler on Gunicorn workers: every ordinary request (the default for web;
        nginx sends the event stream to the events process instead)
  asgi  Django's ASGI handler on Uvicorn workers (the seed's Gunicorn + Uvicorn): the events
        process always, and web when WEB_SERVER=asgi is set for it
"""

import os
import sys

# core.logging_config (no Django in it): Gunicorn's own lines in the app's format.
sys.path.insert(0, os.environ.get("APP_DIR", "."))
from core.logging_config import default_format, logging_config

SERVERS = {
    "wsgi": ("core.wsgi:application", "sync"),
    "asgi": ("core.asgi:application", "core.uvicorn_worker.DjangoUvicornWorker"),
}
server = os.environ.get("WEB_SERVER", "wsgi")
if server not in SERVERS:
    raise SystemExit(f"WEB_SERVER={server!r}: must be one of {', '.join(SERVERS)}")
wsgi_app, worker_class = SERVERS[server]
# WSGI workers serve one request at a time each unless given threads (gthread).
threads = int(os.environ.get("WEB_THREADS", "1"))
if server == "wsgi" and threads > 1:
    worker_class = "gthread"

_host = os.environ.get("WEB_BIND", "0.0.0.0")  # noqa: S104 - inside a container network
bind = f"{_host}:{os.environ.get('WEB_PORT', '8000')}"
# Set explicitly: inside a container the CPU count is the host's.
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
# Below the orchestrator's stop grace period (compose stop_grace_period, supervisor stopwaitsecs).
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "25"))
# Idle keep-alive connections of direct clients (nginx opens a new connection per request;
# sync workers do not keep connections alive).
keepalive = 75
# Recycling guards against slow leaks only, and costs: the replacement imports Django while the
# other workers carry its share (with 2 workers, capacity halves for about a second), and a
# recycled events worker ends its open streams (their tabs reconnect). So rarely, and staggered:
# workers started together under even load would otherwise reach the count together (at 20,000
# with 10% jitter both web workers were replaced within 2 s, and an open-model p99 rose from 4
# to 357 ms).
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "100000"))
max_requests_jitter = max_requests // 2
# Only the proxy may set X-Forwarded-For / X-Forwarded-Proto.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
worker_tmp_dir = "/dev/shm"  # noqa: S108 - heartbeat files in memory, never on a slow disk
control_socket_disable = True
# A line per request here repeats nginx's access line (method, path, status, time, request id)
# and cost 14% of the API read's throughput through nginx on 2 cores, most of it in the process
# that collects stdout. Off by default; on (1) where web serves clients without nginx. Django
# still logs every 4xx and 5xx (django.request), with its request id.
_access_log = os.environ.get("GUNICORN_ACCESS_LOG", "0")
if _access_log not in ("0", "1"):
    raise SystemExit(f"GUNICORN_ACCESS_LOG={_access_log!r}: must be 0 or 1")
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
logconfig_dict = logging_config(
    os.environ.get("LOG_FORMAT") or default_format(os.environ.get("DJANGO_ENV", "development")),
    loglevel.upper(),
    {
        name: {"handlers": ["console"], "propagate": False, "level": level}
        for name, level in (
            ("gunicorn.error", loglevel.upper()),
            # Gunicorn logs access whenever a logging config is given: the level decides.
            ("gunicorn.access", "INFO" if _access_log == "1" else "WARNING"),
        )
    },
)
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}i)s'
