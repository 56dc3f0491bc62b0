"""Ports for servers a test starts itself: a free one, and waiting until the server listens."""

import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    """Until 127.0.0.1:port accepts a connection; fails at once if `process` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process is not None and process.poll() is not None:
                stderr = process.stderr.read() if process.stderr else ""
                raise AssertionError(f"exited before listening on {port}: {stderr}") from None
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.1)
