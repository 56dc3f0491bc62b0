"""An open-model load generator: requests start on a fixed schedule whatever the server does,
and each one's latency counts from when it was due, so queueing shows (a closed loop such as
wrk's waits for answers before sending more and hides it). wrk2, vegeta and oha are not in this
machine's package registries; this does what they do for one URL.

    .venv/bin/python benchmarks/open_load.py URL RATE SECONDS [--header 'Name: value'] [--cafile F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import time

import httpx


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))], 2)


async def _run(
    url: str,
    headers: dict[str, str],
    rate: int,
    seconds: int,
    verify: ssl.SSLContext | bool,
    warmup_s: float,
) -> dict:
    latencies: list[float] = []
    lags: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(
        verify=verify, headers=headers, limits=limits, timeout=30
    ) as client:

        async def one(due: float, counted: bool) -> None:
            lags.append(time.perf_counter() - due)
            try:
                status = (await client.get(url)).status_code
                problem = None if status == 200 else f"status {status}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if counted:
                if problem:
                    errors.append(problem)
                else:
                    latencies.append((time.perf_counter() - due) * 1000)

        start = time.perf_counter() + 0.1
        total = int(rate * (warmup_s + seconds))
        tasks = []
        for n in range(total):
            due = start + n / rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due, counted=n >= rate * warmup_s)))
        await asyncio.gather(*tasks)
    return {
        "offered_rate": rate,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "completed": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "p50_ms": _percentile(latencies, 50),
        "p90_ms": _percentile(latencies, 90),
        "p99_ms": _percentile(latencies, 99),
        "max_ms": _percentile(latencies, 100),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
        # How late the generator itself started requests: if this grows, the client is the limit.
        "generator_lag_p99_ms": _percentile([x * 1000 for x in lags], 99),
    }


def open_load(
    url: str,
    headers: dict[str, str],
    rate: int,
    seconds: int,
    context: ssl.SSLContext | None = None,
    warmup_s: float = 3.0,
) -> dict:
    return asyncio.run(_run(url, headers, rate, seconds, context or True, warmup_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("rate", type=int, help="requests per second")
    parser.add_argument("seconds", type=int)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--cafile")
    args = parser.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    print(json.dumps(open_load(args.url, headers, args.rate, args.seconds, context), indent=2))


if __name__ == "__main__":
    main()
