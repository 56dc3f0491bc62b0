"""The real nginx run alone by its start script (the stack's config, rendered from env), in front
of an upstream the test controls: what a test of nginx's own behaviour needs, without the stack."""

import http.server
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.ports import free_port, wait_listening
from tests.stack_env import REPO_DIR

START = REPO_DIR / "deployments" / "compose" / "nginx" / "start"


class Upstream(http.server.ThreadingHTTPServer):
    """Answers `status` and keeps the X-Forwarded-For each request arrived with."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.forwarded_for: list[str] = []
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream.forwarded_for.append(self.headers.get("X-Forwarded-For", ""))
                self.send_response(upstream.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


@contextmanager
def upstream_running(status: int = 200) -> Iterator[Upstream]:
    server = Upstream(status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def nginx_running(tmp_path: Path, upstream: str, **overrides: str) -> Iterator[str]:
    """nginx on free ports in front of `upstream` (host:port); yields its HTTPS base URL. The
    start script's own defaults hold unless overridden (TLS: a local certificate it makes)."""
    port = free_port()
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "NGINX_CONF_DIR": str(tmp_path / "conf"),
        "NGINX_RUN_DIR": str(tmp_path / "run"),
        "NGINX_HTTP_PORT": str(free_port()),
        "NGINX_HTTPS_PORT": str(port),
        "NGINX_STATUS_LISTEN": f"127.0.0.1:{free_port()}",
        "SERVER_NAME": "localhost",
        "WEB_UPSTREAM": upstream,
        "EVENTS_UPSTREAM": upstream,
        "FLOWER_UPSTREAM": upstream,
        "STATIC_ROOT": str(tmp_path),
        "MEDIA_ROOT": str(tmp_path),
        "ACME_ROOT": str(tmp_path / "acme"),
        "TLS_CERT": str(tmp_path / "tls" / "cert.pem"),
        "TLS_KEY": str(tmp_path / "tls" / "key.pem"),
        **overrides,
    }
    # A session of its own: the start script's reload loop (NGINX_RELOAD_INTERVAL) goes too.
    process = subprocess.Popen(
        [START],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_listening(port, process)
        yield f"https://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
