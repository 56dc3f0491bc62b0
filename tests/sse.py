"""Event streams (/jobs/events/) held open by a test, as browser tabs hold them."""

import contextlib
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.conftest import Account, NativeStack


class OpenStream:
    """An event stream held open in a background thread, as EventSource holds it: a stream the
    server ends cleanly (its lifetime, a web worker recycled or reloaded) is opened again after
    the server's `retry:` delay; a refusal (non-200) or a broken connection stops it. Records
    each event with the time it arrived."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.status: int | None = None  # of the first response
        self.last_status: int | None = None
        self.body = ""
        self.error: str | None = None  # how the stream broke, if it did not end cleanly
        self.clean_ends = 0
        self.events: list[tuple[float, dict]] = []
        self.opened = threading.Event()
        self.ended = threading.Event()  # set at the first clean end
        self._closing = False
        self._socket: socket.socket | None = None
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        try:
            while not self._closing and self._read_once():
                self.clean_ends += 1
                self.ended.set()
                time.sleep(self.retry_s)
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            if not self._closing:
                self.error = type(exc).__name__
        finally:
            self.opened.set()
            self.client.close()  # by this thread: an SSL connection is never used by two

    def _read_once(self) -> bool:
        """One response; True if it was a stream that ended cleanly."""
        with self.client.stream("GET", "/jobs/events/", timeout=60) as response:
            self._socket = response.extensions["network_stream"].get_extra_info("socket")
            self.status = self.status or response.status_code
            self.last_status = response.status_code
            if response.status_code != 200:
                self.body = response.read().decode(errors="replace")
                self.opened.set()  # after the body: a reader of `body` finds it there
                return False
            self.opened.set()
            kind = ""
            for line in response.iter_lines():
                if line.startswith("retry: "):
                    self.retry_s = int(line[7:]) / 1000
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "job":
                    self.events.append((time.time(), json.loads(line[6:])))
        return True

    retry_s = 3.0

    def close(self) -> None:
        """End the stream from another thread without touching its TLS state: shut the TCP
        connection down underneath, and the reading thread sees it end and cleans up."""
        self._closing = True
        if self._socket is not None:
            with (
                contextlib.suppress(OSError),
                socket.socket(fileno=os.dup(self._socket.fileno())) as raw,
            ):
                raw.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)


def tabs(native_stack: NativeStack, account: Account, count: int, address: str | None = None):
    """`count` clients sharing one signed-in session, as a browser's tabs do."""
    cookies = native_stack.session(account).cookies
    return [native_stack.client(local_address=address, cookies=cookies) for _ in range(count)]


@contextmanager
def streams_open(clients: list[httpx.Client]) -> Iterator[list[OpenStream]]:
    opened = [OpenStream(client) for client in clients]
    try:
        for stream in opened:
            assert stream.opened.wait(15), "a stream did not answer"
        yield opened
    finally:
        for stream in opened:
            stream.close()
