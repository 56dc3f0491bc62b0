"""The web tier, measured side by side in one run: which server runs this Django project best,
and what users get through nginx/TLS.

    make bench      # = .venv/bin/python benchmarks/web.py [--rounds 3] [--seconds 8] [--keep]

On the benchmark stack (var/bench, its own ports; benchmarks/_common.py), in rounds that
alternate every configuration so the machine's noise hits all of them:

1. Servers, direct (no nginx), each with WEB_CONCURRENCY workers and the production Gunicorn
   config: the stack's own web process (as shipped: Gunicorn sync workers, WSGI), the WSGI
   reference (the same server started apart), gthread workers, Gunicorn + Uvicorn workers
   (WEB_SERVER=asgi, the seed's server; core.asgi's one-hop handler) and the same with Django's
   own ASGI handler, on a trivial sync view behind every middleware (/diagnostics/request) and
   on the main API read (GET /api/jobs/, token auth, 20 jobs with renditions; after the first
   request of each run the token and the page come from the cache).
2. Through nginx/TLS, the stack itself: the API read as shipped, with web on Uvicorn workers
   (WEB_SERVER=asgi) and naive (DATABASE_POOL_MAX_SIZE=0, CONN_MAX_AGE=0: a new connection per
   request), each a restart of the stack.
3. Open model (benchmarks/open_load.py): the API read through nginx offered at a constant
   rate of half the measured maximum; latency counts from when each request was due.
4. Scale: 1,000 connections at once through nginx, with PostgreSQL's peak session count.

wrk runs closed-loop (-t2 -c64). Writes results/web.{json,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
from _common import (
    REPO_DIR,
    STACK_SCRIPT,
    BenchError,
    base_environ,
    git_commit,
    load_average,
    median,
    pyplot,
    run_stack,
    run_wrk,
    save_plot,
    stack_env,
    stack_python,
    write_results,
)
from open_load import open_load

GUNICORN_CONF = REPO_DIR / "deployments" / "compose" / "django" / "gunicorn.conf.py"
GUNICORN = ["-m", "gunicorn", "--config", str(GUNICORN_CONF), "--chdir", str(REPO_DIR / "app")]
# Granian (a Rust HTTP server), as many workers as web (GRANIAN_WORKERS, GRANIAN_PORT below).
GRANIAN = [
    "-m",
    "granian",
    "--working-dir",
    str(REPO_DIR / "app"),
    "--host",
    "127.0.0.1",
    "--no-access-log",
    "--no-ws",
]
SERVERS = {  # key: (label, settings over the stack's, server command after python)
    "wsgi": ("Gunicorn sync workers (WSGI): the reference", {}, GUNICORN),
    "wsgi_gthread": ("Gunicorn gthread workers, 4 threads", {"WEB_THREADS": "4"}, GUNICORN),
    "asgi": (
        "Gunicorn + Uvicorn workers (WEB_SERVER=asgi, the seed's)",
        {"WEB_SERVER": "asgi"},
        GUNICORN,
    ),
    # The same server with Django's own ASGI handler (a hop per sync middleware hook).
    "asgi_django": (
        "Gunicorn + Uvicorn, Django's own ASGI handler",
        {"WEB_SERVER": "asgi"},
        [*GUNICORN, "django.core.asgi:get_asgi_application()"],
    ),
    "granian_wsgi": (
        "Granian, WSGI",
        {},
        [*GRANIAN, "--interface", "wsgi", "core.wsgi:application"],
    ),
    "granian_asgi": (
        "Granian, ASGI",
        {},
        [*GRANIAN, "--interface", "asgi", "core.asgi:application"],
    ),
}
DIRECT_PORTS = dict(zip(SERVERS, range(28211, 28211 + len(SERVERS)), strict=True))
EDGE_API = "nginx api (shipped)"
STACK_VARIANTS = {
    "nginx api, web WEB_SERVER=asgi (the seed's)": {"WEB_SERVER": "asgi"},
    "nginx api naive (no pool, CONN_MAX_AGE=0)": {
        "DATABASE_POOL_MAX_SIZE": "0",
        "DATABASE_CONN_MAX_AGE": "0",
    },
}
TRIVIAL, API = "/diagnostics/request", "/api/jobs/"

SEED = """
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.authtoken.models import Token
from accounts.models import EmailAddress
from audio.models import Job, Rendition
user, _ = get_user_model().objects.get_or_create(username="bench", email="bench@example.test")
EmailAddress.objects.update_or_create(user=user, defaults={"email": user.email,
                                                           "verified_at": timezone.now()})
for n in range(20 - Job.objects.filter(owner=user).count()):
    job = Job.objects.create(owner=user, preset="podcast", status="done", progress=100,
                             original_name=f"episode-{n}.wav", source_size=1_000_000)
    for fmt in ("mp3", "aac", "opus"):
        Rendition.objects.create(job=job, format=fmt, content_type="audio/mpeg", file_name=fmt,
                                 size=500_000, loudness={"integrated": -16.0})
print(Token.objects.get_or_create(user=user)[0].key)
"""


def seed(env: dict[str, str]) -> str:
    manage = ["run", stack_python(), str(REPO_DIR / "app" / "manage.py")]
    return run_stack([*manage, "shell", "-c", SEED], env, echo=False).split()[-1]


@contextlib.contextmanager
def servers(env: dict[str, str], log_dir: Path) -> Iterator[None]:
    """The direct servers, all started at once (idle ones cost nothing), stopped at the end."""
    started = []
    try:
        for key, (_, settings, args) in SERVERS.items():
            port = str(DIRECT_PORTS[key])
            command = [stack_python(), *args]
            log = (log_dir / f"bench-{key}.log").open("ab")
            started.append(
                subprocess.Popen(
                    [
                        stack_python(),
                        str(STACK_SCRIPT),
                        "run",
                        *command,
                    ],
                    env={
                        **env,
                        **settings,
                        "WEB_PORT": port,
                        "GRANIAN_PORT": port,
                        "GRANIAN_WORKERS": env["WEB_CONCURRENCY"],
                        "DJANGO_SETTINGS_MODULE": "core.settings",
                    },
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        yield
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            process.wait(30)


def wait_ok(url: str, headers: dict[str, str], context: ssl.SSLContext | None) -> None:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    deadline, last = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise BenchError(f"{url} did not answer 200: {last}")


def bring_up(env: dict[str, str], overrides: dict[str, str]) -> None:
    print(f"  stack up {overrides or '(shipped configuration)'}", flush=True)
    run_stack(["up"], {**env, **overrides}, echo=False)


def measure(args: argparse.Namespace) -> dict:
    env = base_environ()
    bring_up(env, {})
    resolved = stack_env(env)
    token = seed(env)
    auth = {"Authorization": f"Token {token}"}
    diagnostics = {"X-Diagnostics-Token": resolved["DIAGNOSTICS_TOKEN"]}
    direct_headers = {"X-Forwarded-Proto": "https", "Host": "localhost"}
    tls = ssl.create_default_context(cafile=str(Path(resolved["STACK_DIR"]) / "tls" / "ca.pem"))
    edge = f"https://localhost:{resolved['NGINX_HTTPS_PORT']}"
    runs: list[dict] = []

    def run(config: str, url: str, headers: dict[str, str], round_: int) -> None:
        result = run_wrk(url, headers, args.connections, args.seconds)
        print(
            f"  round {round_} {config:<36} {result.requests_per_sec:>8.1f} req/s  "
            f"p50 {result.latency_ms.get('50')} ms  p99 {result.latency_ms.get('99')} ms  "
            f"errors {result.errors}",
            flush=True,
        )
        runs.append(
            {
                "round": round_,
                "config": config,
                "req_s": result.requests_per_sec,
                "p50_ms": result.latency_ms.get("50"),
                "p99_ms": result.latency_ms.get("99"),
                "errors": result.errors,
                "load_average": load_average(),
            }
        )

    with servers(resolved, Path(resolved["STACK_DIR"]) / "log"):
        for port in DIRECT_PORTS.values():
            base = f"http://127.0.0.1:{port}"
            wait_ok(base + TRIVIAL, direct_headers | diagnostics, None)
            wait_ok(base + API, direct_headers | auth, None)
        wait_ok(edge + API, auth, tls)
        for round_ in range(1, args.rounds + 1):
            for key, port in {"web": int(resolved["WEB_PORT"]), **DIRECT_PORTS}.items():
                base = f"http://127.0.0.1:{port}"
                run(f"direct {key} trivial", base + TRIVIAL, direct_headers | diagnostics, round_)
                run(f"direct {key} api", base + API, direct_headers | auth, round_)
            run(EDGE_API, edge + API, auth, round_)
            run("nginx trivial", edge + TRIVIAL, diagnostics, round_)
    # Whole-stack variants (a restart each), alternating too.
    for round_ in range(1, args.rounds + 1):
        for config, overrides in STACK_VARIANTS.items():
            bring_up(env, overrides)
            wait_ok(edge + API, auth, tls)
            run(config, edge + API, auth, round_)
    bring_up(env, {})
    wait_ok(edge + API, auth, tls)
    best = median([r["req_s"] for r in runs if r["config"] == EDGE_API]) or 0
    rate = max(1, round(best / 2))
    print(f"  open model: {rate} req/s offered for {args.open_seconds} s", flush=True)
    steady = open_load(edge + API, auth, rate, args.open_seconds, tls)
    print(f"  scale: {args.scale_connections} connections at once", flush=True)
    with PeakSessions(resolved) as sessions:
        # 1,000 clients queue behind a few hundred answers a second: wait 30 s, not wrk's 2 s, so
        # that an error is the server's (a reset, a 5xx), not the client giving up in the queue.
        crowd = run_wrk(edge + API, auth, args.scale_connections, args.seconds, timeout_s=30)
    scale = {
        "connections": args.scale_connections,
        "req_s": crowd.requests_per_sec,
        "p99_ms": crowd.latency_ms.get("99"),
        "errors": crowd.errors,
        "peak_postgres_sessions": sessions.peak,
        "pgbouncer_pool": int(resolved.get("PGBOUNCER_DEFAULT_POOL_SIZE", "20"))
        + int(resolved.get("PGBOUNCER_RESERVE_POOL_SIZE", "0")),
    }
    return {"runs": runs, "open_model": steady, "scale": scale}


class PeakSessions(threading.Thread):
    """The most sessions PostgreSQL serves the app's role at once, sampled every 50 ms."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__()
        self.env, self.peak, self.done = env, 0, threading.Event()

    def run(self) -> None:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
            "AND backend_type = 'client backend'"
        )
        with psycopg.connect(self.env["DATABASE_DIRECT_URL"], autocommit=True) as conn:
            while not self.done.wait(0.05):
                (count,) = conn.execute(query, [self.env["APP_DB_USER"]]).fetchone()
                self.peak = max(self.peak, count)

    def __enter__(self) -> PeakSessions:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def summarize(result: dict) -> dict:
    medians = {}
    for config in dict.fromkeys(r["config"] for r in result["runs"]):
        mine = [r for r in result["runs"] if r["config"] == config]
        medians[config] = {
            k: median([r[k] for r in mine if r[k] is not None])
            for k in ("req_s", "p50_ms", "p99_ms")
        } | {"errors": sum(r["errors"] for r in mine), "rounds": len(mine)}

    def ratio(a: str, b: str) -> float | None:
        x, y = medians.get(a, {}).get("req_s"), medians.get(b, {}).get("req_s")
        return round(x / y, 2) if x and y else None

    return {
        "medians": medians,
        "ratios": {
            "web_tax_trivial (reference / the stack's web; target <= 1.5)": ratio(
                "direct wsgi trivial", "direct web trivial"
            ),
            "web_tax_api (reference / the stack's web)": ratio("direct wsgi api", "direct web api"),
            "asgi_tax_trivial (wsgi / asgi: WEB_SERVER=asgi)": ratio(
                "direct wsgi trivial", "direct asgi trivial"
            ),
            "asgi_tax_api (wsgi / asgi)": ratio("direct wsgi api", "direct asgi api"),
            "gthread / sync, api": ratio("direct wsgi_gthread api", "direct wsgi api"),
            "one_hop_gain_trivial (core.asgi / Django's handler)": ratio(
                "direct asgi trivial", "direct asgi_django trivial"
            ),
            "one_hop_gain_api (core.asgi / Django's handler)": ratio(
                "direct asgi api", "direct asgi_django api"
            ),
            "api_through_nginx / wsgi_trivial (target >= 0.5)": ratio(
                EDGE_API, "direct wsgi trivial"
            ),
            "api_through_nginx / direct wsgi api (nginx + TLS cost)": ratio(
                EDGE_API, "direct wsgi api"
            ),
            "api_through_nginx shipped / seed's asgi web": ratio(
                EDGE_API, "nginx api, web WEB_SERVER=asgi (the seed's)"
            ),
            "api_through_nginx pooled / naive (target >= 20)": ratio(
                EDGE_API, "nginx api naive (no pool, CONN_MAX_AGE=0)"
            ),
        },
    }


def markdown(payload: dict) -> str:
    lines = [
        f"# Web benchmark ({payload['finished']}, commit {payload['commit']})",
        "",
        f"wrk -t2 -c{payload['options']['connections']}, {payload['options']['seconds']} s a "
        f"run, {payload['options']['rounds']} alternating rounds (medians); load average "
        f"before/after {payload['load_average_before']} / {payload['load_average_after']}.",
        "",
        "| configuration | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
    ]
    for config, m in payload["summary"]["medians"].items():
        lines.append(f"| {config} | {m['req_s']} | {m['p50_ms']} | {m['p99_ms']} | {m['errors']} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in payload["summary"]["ratios"].items()]
    o = payload["open_model"]
    lines += [
        "",
        f"Open model, API read through nginx: {o['offered_rate']} req/s offered for "
        f"{o['seconds']} s, {o['completed']} completed, {o['errors']} errors; latency from "
        f"each request's due time: p50 {o['p50_ms']} ms, p90 {o['p90_ms']} ms, "
        f"p99 {o['p99_ms']} ms (target p99 <= 50 ms).",
    ]
    c = payload["scale"]
    lines += [
        "",
        f"Scale, API read through nginx: {c['connections']} connections at once: "
        f"{c['req_s']} req/s, p99 {c['p99_ms']} ms, {c['errors']} errors; PostgreSQL served "
        f"the app with at most {c['peak_postgres_sessions']} sessions (PgBouncer pool and "
        f"reserve: {c['pgbouncer_pool']}).",
    ]
    return "\n".join(lines)


def plot(payload: dict) -> Path:
    plt = pyplot()
    medians = payload["summary"]["medians"]
    names = list(medians)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    left.barh(names, [medians[n]["req_s"] or 0 for n in names], color="tab:blue")
    left.set_xlabel("requests/s (median)")
    left.invert_yaxis()
    y = range(len(names))
    right.barh([i - 0.2 for i in y], [medians[n]["p50_ms"] or 0 for n in names], 0.4, label="p50")
    right.barh([i + 0.2 for i in y], [medians[n]["p99_ms"] or 0 for n in names], 0.4, label="p99")
    right.set_yticks(list(y), [""] * len(names))
    right.invert_yaxis()
    right.set_xscale("log")
    right.set_xlabel("latency ms (median of rounds, log scale)")
    right.legend()
    fig.suptitle(
        f"web tier, {payload['options']['rounds']} alternating rounds, "
        f"load average {payload['load_average_before']}"
    )
    return save_plot("web", fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--open-seconds", type=int, default=20)
    parser.add_argument("--scale-connections", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args(argv)
    before = load_average()
    try:
        result = measure(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            run_stack(["down"], base_environ(), echo=False)
    payload = {
        "benchmark": "web",
        "commit": git_commit(),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "options": vars(args),
        "load_average_before": before,
        "load_average_after": load_average(),
        **result,
        "summary": summarize(result),
    }
    paths = write_results("web", payload, markdown(payload))
    plot(payload)
    print(paths[1].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
