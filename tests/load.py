"""What the suites' load generators share: client threads that run from the start of a `with`
block to its end."""

import threading
from typing import Self


class ClientThreads:
    """`threads` threads running `_run` (until `_stop` is set) for the length of a `with` block;
    at its end they are stopped and joined, each within `join_timeout` s (None: unbounded)."""

    join_timeout: float | None = None

    def __init__(self, threads: int) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.join_timeout)
