"""nginx behind another proxy (a load balancer, the Kubernetes Ingress controller):
NGINX_TRUSTED_PROXIES makes it take the client's address from X-Forwarded-For, but only from
those networks, so a forged header from anyone else changes nothing, and the per-address login
limit counts clients, not the proxy. The real nginx, run by its start script, in front of an
upstream that records what it was told."""

import http.server
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack_env import REPO_DIR

START = REPO_DIR / "deployments" / "compose" / "nginx" / "start"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(http.server.ThreadingHTTPServer):
    """Answers 200 and keeps the X-Forwarded-For each request arrived with."""

    def __init__(self) -> None:
        self.forwarded_for: list[str] = []
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream.forwarded_for.append(self.headers.get("X-Forwarded-For", ""))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def nginx(tmp_path: Path, upstream: Upstream, trusted: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    address = f"127.0.0.1:{upstream.server_address[1]}"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "NGINX_CONF_DIR": str(tmp_path / "conf"), "NGINX_RUN_DIR": str(tmp_path / "run"),
        "NGINX_HTTP_PORT": str(free_port()), "NGINX_HTTPS_PORT": str(port),
        "NGINX_STATUS_LISTEN": f"127.0.0.1:{free_port()}", "SERVER_NAME": "localhost",
        "WEB_UPSTREAM": address, "EVENTS_UPSTREAM": address, "FLOWER_UPSTREAM": address,
        "STATIC_ROOT": str(tmp_path), "MEDIA_ROOT": str(tmp_path),
        "ACME_ROOT": str(tmp_path / "acme"), "TLS_CERT": str(tmp_path / "tls" / "cert.pem"),
        "TLS_KEY": str(tmp_path / "tls" / "key.pem"), "NGINX_TRUSTED_PROXIES": trusted,
        "NGINX_LOGIN_RATE": "10r/m", "NGINX_LOGIN_BURST": "2",
    }  # fmt: skip
    process = subprocess.Popen([START], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"https://127.0.0.1:{port}"
        except OSError:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.2)


def get(base: str, path: str, client: str) -> int:
    headers = {"X-Forwarded-For": client, "Host": "localhost"}
    return httpx.get(base + path, headers=headers, verify=False, timeout=10).status_code


def test_a_trusted_proxy_gives_the_client_address(tmp_path, upstream) -> None:
    process, base = nginx(tmp_path, upstream, "127.0.0.0/8,10.0.0.0/8")
    try:
        assert get(base, "/", "203.0.113.7") == 200
        assert upstream.forwarded_for[-1] == "203.0.113.7"
        # The login limit (burst 2) counts each client apart behind the one proxy.
        first = [get(base, "/accounts/login/", "198.51.100.1") for _ in range(5)]
        other = get(base, "/accounts/login/", "198.51.100.2")
        assert first.count(429) >= 2 and other == 200, (first, other)
    finally:
        process.terminate()
        process.wait(10)


def test_a_forged_header_from_anyone_else_changes_nothing(tmp_path, upstream) -> None:
    process, base = nginx(tmp_path, upstream, "10.0.0.0/8")
    try:
        assert get(base, "/", "203.0.113.7") == 200
        assert upstream.forwarded_for[-1] == "127.0.0.1"
        # One client, whatever it claims: the limit holds.
        statuses = [get(base, "/accounts/login/", f"198.51.100.{n}") for n in range(5)]
        assert statuses.count(429) >= 2, statuses
    finally:
        process.terminate()
        process.wait(10)
