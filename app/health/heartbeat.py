"""Heartbeat files for processes that serve no HTTP (Celery worker and beat).

A process touches its file while its main loop runs; a healthcheck reads the file's age. This
module imports nothing heavy so that the check is cheap (`python -m health.heartbeat check worker`).
"""

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_DIR = "/tmp/heartbeat"  # noqa: S108 - per-container tmpfs; natively var/run/heartbeat


def heartbeat_dir() -> Path:
    return Path(os.environ.get("HEARTBEAT_DIR", DEFAULT_DIR))


def touch(name: str) -> None:
    """Record that `name` is alive now."""
    directory = heartbeat_dir()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).touch()


def clear(name: str) -> None:
    (heartbeat_dir() / name).unlink(missing_ok=True)


def age(name: str) -> float | None:
    """Seconds since `name` last beat, or None if it never did."""
    try:
        return time.time() - (heartbeat_dir() / name).stat().st_mtime
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a heartbeat file's age.")
    parser.add_argument("command", choices=["check"])
    parser.add_argument("name", help="worker or beat")
    parser.add_argument("--max-age", type=float, default=30.0, help="seconds (default 30)")
    args = parser.parse_args(argv)
    seconds = age(args.name)
    if seconds is None:
        print(f"{args.name}: no heartbeat in {heartbeat_dir()}", file=sys.stderr)
        return 1
    if seconds > args.max_age:
        print(
            f"{args.name}: last heartbeat {seconds:.0f}s ago (> {args.max_age:.0f}s)",
            file=sys.stderr,
        )
        return 1
    print(f"{args.name}: alive ({seconds:.1f}s ago)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
