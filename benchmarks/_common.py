"""What the benchmarks share: their own native stack, wrk, and the latest-result files."""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[1]
NATIVE_DIR = REPO_DIR / "deployments" / "native"
STACK_SCRIPT = NATIVE_DIR / "stack.py"
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: The benchmark stack: its own state folder and ports (var/ and var/test belong to others).
BENCH_OVERRIDES = {
    "STACK_DIR": str(REPO_DIR / "var" / "bench"),
    "POSTGRES_PORT": "25632",
    "PGBOUNCER_PORT": "26632",
    "REDIS_BROKER_PORT": "26579",
    "REDIS_CACHE_PORT": "26580",
    "WEB_PORT": "28200",
    "EVENTS_PORT": "28201",
    "FLOWER_PORT": "25755",
    "WORKER_METRICS_PORT": "30008",
    "NGINX_STATUS_PORT": "28281",
    "NGINX_HTTP_PORT": "9180",
    "NGINX_HTTPS_PORT": "9543",
}


class BenchError(Exception):
    """A failure that stops the benchmark; printed without a traceback."""


def base_environ(**overrides: str) -> dict[str, str]:
    """The shell environment without STACK_* (an outer `stack.py run` would short-circuit its
    environment), plus the benchmark stack's state folder and ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACK_")}
    return {**env, **BENCH_OVERRIDES, **overrides}


def stack_python() -> str:
    venv_python = REPO_DIR / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def run_stack(args: list[str], env: dict[str, str], echo: bool = True) -> str:
    """`stack.py ARGS` with env; returns its standard output, raises on failure."""
    result = subprocess.run(
        [stack_python(), str(STACK_SCRIPT), *args],
        env=env,
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    if echo and (result.stdout or result.stderr).strip():
        print("\n".join(f"    {ln}" for ln in (result.stdout + result.stderr).splitlines()))
    if result.returncode != 0:
        raise BenchError(f"stack.py {args[0]} failed (exit {result.returncode}): {result.stderr}")
    return result.stdout


def stack_env(env: dict[str, str]) -> dict[str, str]:
    """The stack's resolved environment (passwords, certificate paths) as `stack.py env` prints."""
    resolved = dict(env)  # `env` prints only what the stack added to it
    for line in run_stack(["env"], env, echo=False).splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        resolved[key] = shlex.split(value)[0] if value else ""
    return resolved


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(values: list[float], digits: int = 2) -> float | None:
    return round(statistics.median(values), digits) if values else None


@dataclass
class Wrk:
    requests_per_sec: float
    latency_ms: dict[str, float] = field(default_factory=dict)  # "50", "99"
    errors: int = 0  # non-2xx/3xx responses plus socket errors


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def run_wrk(
    url: str, headers: dict[str, str], connections: int, seconds: int, timeout_s: int = 2
) -> Wrk:
    """wrk counts a request unanswered after `timeout_s` (its default 2 s) as an error."""
    command = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={timeout_s}s",
        "--latency",
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    result = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    out = result.stdout + result.stderr
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        raise BenchError(f"wrk failed (exit {result.returncode}):\n{out}")
    latency = {
        pct: round(float(value) * _UNIT_MS[unit], 2)
        for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    }
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    if socket := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(map(int, socket.groups()))
    return Wrk(float(rate.group(1)), latency, errors)


def git_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def write_results(name: str, payload: dict[str, Any], markdown: str) -> list[Path]:
    """One latest result per benchmark, kept in git: name.json and name.md (older runs are
    noise; git history has them)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    for old in RESULTS_DIR.glob(f"{name}-*.json"):  # the dated files of earlier versions
        old.unlink()
    paths = [RESULTS_DIR / f"{name}.json", RESULTS_DIR / f"{name}.md"]
    paths[0].write_text(json.dumps(payload, indent=2) + "\n")
    paths[1].write_text(markdown + "\n")
    return paths


def pyplot() -> Any:
    """matplotlib.pyplot on its file-only backend (matplotlib: the `bench` dependency group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(name: str, figure: Any) -> Path:
    """The plot next to the benchmark's latest result: results/name.png."""
    path = RESULTS_DIR / f"{name}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
