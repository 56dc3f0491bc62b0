"""A running Prometheus's HTTP API and what the stack's monitoring promises of it, shared by the
native stack's monitoring tests (tests/e2e/test_monitoring.py) and the container suite."""

import json
import re
import time

import httpx

from tests.stack_env import REPO_DIR

MONITORING = REPO_DIR / "deployments" / "compose" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "core-stack.json"
SCRAPE_WAIT_S = 30  # 2 s scrapes; generous for a loaded machine


class Prometheus:
    """The HTTP API of a running Prometheus (the native stack's or a container's)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def target_health(self) -> dict[tuple[str, str], str]:
        """(job, redis label) -> health of each target, once all are up or SCRAPE_WAIT_S passed."""
        deadline = time.monotonic() + SCRAPE_WAIT_S
        while True:
            active = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]
            health = {
                (t["labels"]["job"], t["labels"].get("redis", "")): t["health"]
                for t in active["activeTargets"]
            }
            if (health and all(h == "up" for h in health.values())) or time.monotonic() > deadline:
                return health
            time.sleep(1)

    def wait_for(self, expr: str, predicate) -> float | None:
        deadline = time.monotonic() + SCRAPE_WAIT_S
        while True:
            value = self.value(expr)
            if (value is not None and predicate(value)) or time.monotonic() > deadline:
                return value
            time.sleep(1)


TARGETS = {
    "prometheus",
    "web",
    "events",
    "celery_worker",
    "flower",
    "postgres",
    "pgbouncer",
    "redis",
    "nginx",
    "node",
}


def assert_every_target_reaches_its_server(
    prometheus: Prometheus, health: dict[tuple[str, str], str]
) -> None:
    assert {job for job, _ in health} == TARGETS
    assert all(h == "up" for h in health.values()), {k: h for k, h in health.items() if h != "up"}
    # An exporter that answers but cannot log in to its server would still be `up`.
    for expr in (
        "pg_up",
        "pgbouncer_up",
        "nginx_up",
        'redis_up{redis="broker"}',
        'redis_up{redis="cache"}',
        "sum(flower_worker_online)",
    ):
        assert prometheus.wait_for(expr, lambda v: v >= 1) == 1, expr


def dashboard_metrics_missing(prometheus: Prometheus) -> dict[str, set[str]]:
    """Panels whose query names a metric Prometheus does not have (each query must evaluate)."""
    known = set(
        httpx.get(f"{prometheus.url}/api/v1/label/__name__/values", timeout=10).json()["data"]
    )
    keywords = {"by", "without", "on", "ignoring", "and", "or", "unless", "bool"}
    missing: dict[str, set[str]] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            prometheus.query(target["expr"])
            # What is left once label matchers, ranges, groupings and calls are taken out.
            expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(by|without)\s*\([^)]*\)", " ", target["expr"])
            expr = re.sub(r"\b[a-z_]+\s*\(", "(", expr)
            names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr)) - keywords
            if absent := {name for name in names if name not in known}:
                missing.setdefault(panel["title"], set()).update(absent)
    return missing
