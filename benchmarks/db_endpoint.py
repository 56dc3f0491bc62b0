"""Benchmark a database-backed endpoint: psycopg pool vs. a new connection per request.

Runs the whole native stack in its own state folder (var/bench) on ports of its own, so a stack
started with `make up` (var/) or by the tests (var/test) is left alone. For each configuration it
brings the stack up with that environment (stack.py restarts it when the environment changes),
checks that GET /diagnostics/database answers 200, warms up, and measures it through nginx (HTTPS)
with wrk. Configurations alternate in rounds (A, B, A, B, ...) so the machine's noise hits both.

    .venv/bin/python benchmarks/db_endpoint.py [--rounds 2] [--duration 10] [--connections 64]

Prints per-round and median numbers and writes them to benchmarks/results/db_endpoint-<UTC>.json.
The stack is brought down at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import ssl
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_DIR = Path(__file__).resolve().parents[1]
NATIVE_DIR = REPO_DIR / "deployments" / "native"
STACK_SCRIPT = NATIVE_DIR / "stack.py"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
ENDPOINT = "/diagnostics/database"
WRK_THREADS = 2

#: The benchmark stack: its own state folder and ports (var/ and var/test belong to others).
BENCH_OVERRIDES = {
    "STACK_DIR": str(REPO_DIR / "var" / "bench"),
    "POSTGRES_PORT": "25632",
    "PGBOUNCER_PORT": "26632",
    "REDIS_BROKER_PORT": "26579",
    "REDIS_CACHE_PORT": "26580",
    "WEB_PORT": "28200",
    "FLOWER_PORT": "25755",
    "NGINX_HTTP_PORT": "9180",
    "NGINX_HTTPS_PORT": "9543",
}


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    env: dict[str, str]


CONFIGS = (
    Config(
        "pooled",
        "pooled (POOL_MAX_SIZE=4, CONN_MAX_AGE=0)",
        {"DATABASE_POOL_MAX_SIZE": "4", "DATABASE_CONN_MAX_AGE": "0"},
    ),
    Config(
        "no_pool",
        "no pool, CONN_MAX_AGE=0",
        {"DATABASE_POOL_MAX_SIZE": "0", "DATABASE_CONN_MAX_AGE": "0"},
    ),
)

LABEL_WIDTH = max(len(c.label) for c in CONFIGS)


@dataclass
class WrkResult:
    requests_per_sec: float | None = None
    requests: int | None = None
    duration_s: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # "50", "75", "90", "99"
    non_2xx_3xx: int = 0
    socket_errors: dict[str, int] = field(
        default_factory=lambda: {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    )
    exit_code: int = 0

    @property
    def socket_error_total(self) -> int:
        return sum(self.socket_errors.values())


@dataclass
class Run:
    round: int
    config: str
    wrk: WrkResult
    nginx_statuses: dict[str, int]  # status codes nginx logged for the endpoint during the run
    web_error_lines: int  # lines with ERROR/Traceback in the web log during the run
    web_error_samples: list[str]
    loadavg_before: tuple[float, float, float]
    restarted: bool
    wrk_output: str


class BenchError(Exception):
    """A failure that stops the benchmark; printed without a traceback."""


# --- environment and stack -----------------------------------------------------------------


def base_environ() -> dict[str, str]:
    """The shell environment without STACK_* (an outer `stack.py run` would short-circuit
    load_env), plus the benchmark stack's state folder and ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACK_")}
    env.update(BENCH_OVERRIDES)
    return env


def resolved_stack_env() -> dict[str, str]:
    """The benchmark stack's resolved environment (token, certificate paths, ports)."""
    for key in [k for k in os.environ if k.startswith("STACK_")]:
        del os.environ[key]
    os.environ.update(BENCH_OVERRIDES)
    sys.path.insert(0, str(NATIVE_DIR))
    import stack

    return stack.load_env()


def stack_python() -> str:
    venv_python = REPO_DIR / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def run_stack(command: str, env: dict[str, str]) -> str:
    """`stack.py COMMAND` with env; returns its output (also echoed), raises on failure."""
    result = subprocess.run(
        [stack_python(), str(STACK_SCRIPT), command],
        env=env,
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    output = (result.stdout + result.stderr).rstrip()
    if output:
        print("\n".join(f"    {line}" for line in output.splitlines()), flush=True)
    if result.returncode != 0:
        raise BenchError(f"stack.py {command} failed (exit {result.returncode})")
    return output


def check_supervisord_env(stack_env: dict[str, str], config: Config) -> None:
    """The running supervisord (whose environment every service inherits) has the config."""
    pidfile = Path(stack_env["STACK_DIR"]) / "run" / "supervisord.pid"
    try:
        pid = int(pidfile.read_text().strip())
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read the environment of supervisord ({pidfile}): {exc}") from exc
    running = dict(
        item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
    )
    wrong = {k: running.get(k) for k, v in config.env.items() if running.get(k) != v}
    if wrong:
        raise BenchError(f"stack runs with {wrong}, expected {config.env} ({config.label})")


def check_endpoint(url: str, token: str, cafile: Path, timeout: float = 30.0) -> dict[str, Any]:
    """GET the endpoint (certificate verified against the stack's CA) until it answers 200."""
    context = ssl.create_default_context(cafile=str(cafile))
    request = urllib.request.Request(url, headers={"X-Diagnostics-Token": token})  # noqa: S310
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
                body = response.read()
                if response.status == 200:
                    return json.loads(body)
                last = f"HTTP {response.status}: {body[:200]!r}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = repr(exc)
        time.sleep(1)
    raise BenchError(f"{url} did not answer 200 within {timeout:.0f}s; last: {last}")


# --- logs ----------------------------------------------------------------------------------


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def settled_size(path: Path, quiet: float = 0.5, limit: float = 5.0) -> int:
    """The log's size once supervisord has stopped appending to it (output lags a little)."""
    deadline = time.monotonic() + limit
    size = log_size(path)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = log_size(path)
        if now == size:
            break
        size = now
    return size


def read_since(path: Path, offset: int) -> str:
    """What was appended to a log since offset (the whole file if it was rotated meanwhile)."""
    if not path.exists():
        return ""
    size = log_size(path)
    with path.open("rb") as handle:
        handle.seek(offset if size >= offset else 0)
        return handle.read().decode(errors="replace")


NGINX_STATUS = re.compile(r'"GET ' + re.escape(ENDPOINT) + r'[^"]*" (\d{3}) ')


def nginx_statuses(text: str) -> dict[str, int]:
    return dict(sorted(Counter(NGINX_STATUS.findall(text)).items()))


def web_errors(text: str) -> tuple[int, list[str]]:
    lines = [ln for ln in text.splitlines() if "ERROR" in ln or "Traceback" in ln]
    samples = list(dict.fromkeys(ln.strip()[:240] for ln in lines))[:5]
    return len(lines), samples


# --- wrk -----------------------------------------------------------------------------------

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION_S = {"us": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wrk(output: str, exit_code: int) -> WrkResult:
    result = WrkResult(exit_code=exit_code)
    if match := re.search(r"Requests/sec:\s+([\d.]+)", output):
        result.requests_per_sec = float(match.group(1))
    if match := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", output):
        result.requests = int(match.group(1))
        result.duration_s = float(match.group(2)) * _DURATION_S[match.group(3)]
    for pct, value, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M):
        result.latency_ms[pct] = round(float(value) * _UNIT_MS[unit], 3)
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        result.non_2xx_3xx = int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        result.socket_errors = dict(
            zip(("connect", "read", "write", "timeout"), map(int, match.groups()), strict=True)
        )
    return result


def wrk_command(url: str, token: str, connections: int, duration: int) -> list[str]:
    return [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-H",
        f"X-Diagnostics-Token: {token}",
        url,
    ]


def run_wrk(url: str, token: str, connections: int, duration: int) -> tuple[WrkResult, str]:
    command = wrk_command(url, token, connections, duration)
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=duration + 60, check=False
        )
    except FileNotFoundError as exc:
        raise BenchError("wrk is not installed (apt-get install wrk)") from exc
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {duration + 60}s") from exc
    output = result.stdout + result.stderr
    parsed = parse_wrk(output, result.returncode)
    if parsed.requests_per_sec is None:
        raise BenchError(f"could not parse wrk's output (exit {result.returncode}):\n{output}")
    return parsed, output


# --- report --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[Run]) -> dict[str, dict[str, float | None]]:
    summary: dict[str, dict[str, float | None]] = {}
    for config in CONFIGS:
        mine = [r for r in runs if r.config == config.key]
        if not mine:
            continue
        summary[config.key] = {
            "requests_per_sec": median_of([r.wrk.requests_per_sec for r in mine]),
            "p50_ms": median_of([r.wrk.latency_ms.get("50") for r in mine]),
            "p99_ms": median_of([r.wrk.latency_ms.get("99") for r in mine]),
            "non_2xx_3xx_total": sum(r.wrk.non_2xx_3xx for r in mine),
            "socket_errors_total": sum(r.wrk.socket_error_total for r in mine),
        }
    return summary


def ratios(summary: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """pooled / no-pool for the medians (req/s > 1 and latency < 1 favour the pool)."""
    a, b = summary.get(CONFIGS[0].key), summary.get(CONFIGS[1].key)
    out: dict[str, float | None] = {}
    for metric in ("requests_per_sec", "p50_ms", "p99_ms"):
        x, y = (a or {}).get(metric), (b or {}).get(metric)
        out[metric] = round(x / y, 3) if x is not None and y else None
    return out


def table(runs: list[Run], summary: dict[str, dict[str, float | None]]) -> str:
    header = (
        f"{'round':>5}  {'config':<{LABEL_WIDTH}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>9} "
        f"{'requests':>9} {'non-2xx':>8} {'sock err':>9}  nginx statuses / socket errors"
    )
    lines = [header, "-" * len(header)]
    labels = {c.key: c.label for c in CONFIGS}
    for r in runs:
        w = r.wrk
        errors = ", ".join(f"{k} {v}" for k, v in w.socket_errors.items() if v)
        statuses = " ".join(f"{k}:{v}" for k, v in r.nginx_statuses.items())
        lines.append(
            f"{r.round:>5}  {labels[r.config]:<{LABEL_WIDTH}} {fmt(w.requests_per_sec):>9} "
            f"{fmt(w.latency_ms.get('50'), 2):>8} {fmt(w.latency_ms.get('99'), 2):>9} "
            f"{w.requests or 0:>9,} {w.non_2xx_3xx:>8,} {w.socket_error_total:>9,}  "
            f"{statuses}{'  [' + errors + ']' if errors else ''}"
        )
    lines.append("-" * len(header))
    for key, s in summary.items():
        lines.append(
            f"{'med':>5}  {labels[key]:<{LABEL_WIDTH}} {fmt(s['requests_per_sec']):>9} "
            f"{fmt(s['p50_ms'], 2):>8} {fmt(s['p99_ms'], 2):>9} {'':>9} "
            f"{int(s['non_2xx_3xx_total'] or 0):>8,} {int(s['socket_errors_total'] or 0):>9,}"
        )
    r = ratios(summary)
    lines.append(
        f"{'ratio':>5}  {'pooled / no pool':<{LABEL_WIDTH}} {fmt(r['requests_per_sec'], 2):>8}x "
        f"{fmt(r['p50_ms'], 2):>7}x {fmt(r['p99_ms'], 2):>8}x"
    )
    lines.append(
        "non-2xx: wrk's count of responses >= 400. nginx 499: requests still in flight when wrk "
        "stopped (it closes its connections), not errors."
    )
    return "\n".join(lines)


def git_commit() -> str | None:
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or None


def git_dirty() -> bool | None:
    result = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO_DIR, capture_output=True, text=True, check=False
    )
    return bool(result.stdout.strip()) if result.returncode == 0 else None


def write_json(
    args: argparse.Namespace,
    stack_env: dict[str, str],
    url: str,
    started: dt.datetime,
    runs: list[Run],
    summary: dict[str, dict[str, float | None]],
    complete: bool,
) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"db_endpoint-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    payload = {
        "benchmark": "db_endpoint",
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "complete": complete,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "url": url,
        "wrk": shlex.join(wrk_command(url, "<DIAGNOSTICS_TOKEN>", args.connections, args.duration)),
        "options": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": WRK_THREADS,
            "warmup_s": args.warmup,
        },
        "stack": {
            "stack_dir": stack_env["STACK_DIR"],
            "web_concurrency": stack_env.get("WEB_CONCURRENCY"),
            "pgbouncer_default_pool_size": stack_env.get("PGBOUNCER_DEFAULT_POOL_SIZE", "20"),
        },
        "configs": [{"key": c.key, "label": c.label, "env": c.env} for c in CONFIGS],
        "runs": [
            {**asdict(r), "wrk": {**asdict(r.wrk), "socket_error_total": r.wrk.socket_error_total}}
            for r in runs
        ],
        "median": summary,
        "ratio_pooled_over_no_pool": ratios(summary),
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


# --- main ----------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=positive_int, default=10, help="seconds per run")
    parser.add_argument("--connections", type=positive_int, default=64, help="wrk connections")
    parser.add_argument("--rounds", type=positive_int, default=2, help="A, B pairs to run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before each run")
    parser.add_argument("--keep", action="store_true", help="leave the var/bench stack running")
    args = parser.parse_args(argv)
    if args.connections < WRK_THREADS:
        parser.error(f"--connections must be at least the {WRK_THREADS} wrk threads")
    return args


def bench(args: argparse.Namespace, stack_env: dict[str, str], runs: list[Run]) -> None:
    url = f"https://localhost:{stack_env['NGINX_HTTPS_PORT']}{ENDPOINT}"
    token = stack_env.get("DIAGNOSTICS_TOKEN", "")
    if not token:
        raise BenchError("DIAGNOSTICS_TOKEN is empty: the endpoint would answer 404")
    cafile = Path(stack_env["TLS_CERT"]).parent / "ca.pem"
    logs = Path(stack_env["STACK_DIR"]) / "log"
    for round_no in range(1, args.rounds + 1):
        for config in CONFIGS:
            print(f"\n== round {round_no}/{args.rounds}: {config.label}", flush=True)
            output = run_stack("up", {**base_environ(), **config.env})
            check_supervisord_env(stack_env, config)
            answer = check_endpoint(url, token, cafile)
            print(f"    GET {ENDPOINT}: 200 {answer}", flush=True)
            if args.warmup > 0:
                warm, _ = run_wrk(url, token, args.connections, args.warmup)
                print(
                    f"    warm-up {args.warmup}s: {fmt(warm.requests_per_sec)} req/s, "
                    f"non-2xx {warm.non_2xx_3xx}, socket errors {warm.socket_error_total}",
                    flush=True,
                )
            nginx_log, web_log = logs / "nginx.log", logs / "web.log"
            # Start the slices after the warm-up's last lines (its abandoned requests: 499).
            nginx_from, web_from = settled_size(nginx_log), settled_size(web_log)
            loadavg = os.getloadavg()
            result, wrk_output = run_wrk(url, token, args.connections, args.duration)
            settled_size(nginx_log)  # let supervisord write the run's last lines
            settled_size(web_log)
            error_count, error_samples = web_errors(read_since(web_log, web_from))
            run = Run(
                round=round_no,
                config=config.key,
                wrk=result,
                nginx_statuses=nginx_statuses(read_since(nginx_log, nginx_from)),
                web_error_lines=error_count,
                web_error_samples=error_samples,
                loadavg_before=(round(loadavg[0], 2), round(loadavg[1], 2), round(loadavg[2], 2)),
                restarted="Configuration changed" in output,
                wrk_output=wrk_output,
            )
            runs.append(run)
            print(
                f"    {fmt(result.requests_per_sec)} req/s, p50 "
                f"{fmt(result.latency_ms.get('50'), 2)} ms, p99 "
                f"{fmt(result.latency_ms.get('99'), 2)} ms, non-2xx {result.non_2xx_3xx}, "
                f"socket errors {result.socket_errors}, nginx {run.nginx_statuses}, "
                f"web log errors {error_count}",
                flush=True,
            )
            for sample in error_samples:
                print(f"      web: {sample}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    stack_env = resolved_stack_env()
    url = f"https://localhost:{stack_env['NGINX_HTTPS_PORT']}{ENDPOINT}"
    runs: list[Run] = []
    failure: BaseException | None = None
    print(
        f"Benchmark stack: {stack_env['STACK_DIR']} (HTTPS port {stack_env['NGINX_HTTPS_PORT']}, "
        f"WEB_CONCURRENCY={stack_env.get('WEB_CONCURRENCY')}); {args.rounds} rounds x "
        f"{len(CONFIGS)} configs, wrk -t{WRK_THREADS} -c{args.connections} -d{args.duration}s",
        flush=True,
    )
    try:
        bench(args, stack_env, runs)
    except BaseException as exc:  # report what was measured, then re-raise or exit non-zero
        failure = exc
    finally:
        if args.keep:
            print(f"\n--keep: the stack in {stack_env['STACK_DIR']} is still running")
        else:
            print("\n== stack.py down", flush=True)
            try:
                run_stack("down", base_environ())
            except BenchError as exc:
                print(f"bench: {exc}", file=sys.stderr)
    summary = summarize(runs)
    if runs:
        print()
        print(table(runs, summary))
        path = write_json(args, stack_env, url, started, runs, summary, failure is None)
        print(f"\nResults: {path.relative_to(REPO_DIR)}")
    if isinstance(failure, BenchError):
        print(f"bench: {failure}", file=sys.stderr)
        return 1
    if failure is not None:
        raise failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
