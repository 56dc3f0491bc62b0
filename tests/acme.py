"""Checking a certificate served over TLS, and requests that keep flowing while it changes."""

import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
from cryptography import x509

NAME = "site.example.test"  # what the ACME test server certifies (its DNS answers every name)


def served_certificate(port: int, root: Path, name: str = NAME) -> x509.Certificate:
    """What the server on 127.0.0.1:port presents for `name`, verified against `root` (chain and
    host name)."""
    context = ssl.create_default_context(cafile=str(root))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def wait_for_new_certificate(
    port: int, root: Path, previous: int | None, timeout: float = 15
) -> x509.Certificate:
    """nginx's workers take a reloaded certificate within moments."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            served = served_certificate(port, root)
            if served.serial_number != previous:
                return served
        except ssl.SSLError:  # still the certificate from before (another CA)
            pass
        assert time.monotonic() < deadline, "nginx did not serve the new certificate"
        time.sleep(0.2)


class RequestsFlowing:
    """GET /healthz back to back over HTTPS while the certificate changes under it (either of the
    two certificates will do: what counts is that no request fails).

    A reload closes the old workers' idle keep-alive connections; a request written at that very
    moment is lost unanswered, and HTTP clients retry an idempotent request once on a fresh
    connection when a reused one closes without a response (RFC 9112 section 9.3.1; browsers and
    curl do). This client does the same and counts those retries; a failure is anything else, or
    a retry that fails too."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.count = 0
        self.retried = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False  # the new certificate names NAME, not localhost
        context.verify_mode = ssl.CERT_NONE
        with httpx.Client(base_url=self.base_url, verify=context, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    status = self._get(client)
                    if status != 200:
                        self.failures.append(f"status {status}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.count += 1

    def _get(self, client: httpx.Client) -> int:
        try:
            return client.get("/healthz").status_code
        except httpx.RemoteProtocolError as exc:
            if "without sending a response" not in str(exc):
                raise
            self.retried += 1  # the pool has dropped the closed connection: this one is new
            return client.get("/healthz").status_code

    def __enter__(self) -> "RequestsFlowing":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
