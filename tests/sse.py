"""Event streams (/jobs/events/) held open by a test, as browser tabs hold them."""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.conftest import Account, NativeStack


class OpenStream:
    """An event stream held open in a background thread; records each event and when it came."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.status: int | None = None
        self.body = ""
        self.error: str | None = None  # how the stream broke, if it did not end cleanly
        self.events: list[tuple[float, dict]] = []
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            with self.client.stream("GET", "/jobs/events/", timeout=60) as response:
                self.status = response.status_code
                self.opened.set()
                if response.status_code != 200:
                    self.body = response.read().decode(errors="replace")
                    return
                kind = ""
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "job":
                        self.events.append((time.time(), json.loads(line[6:])))
        except httpx.HTTPError as exc:
            self.error = type(exc).__name__
        finally:
            self.opened.set()
            self.ended.set()

    def close(self) -> None:
        self.client.close()


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
