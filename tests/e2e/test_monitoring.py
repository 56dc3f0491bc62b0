"""Metrics an operator can read (README, "Metrics"): the test stack runs with MONITORING=1, so a
real Prometheus (Debian's) scrapes web, events, the worker, Flower and an exporter per server
every 2 s, with the alert rules loaded. The rules themselves are unit-tested by promtool
(tests/unit/test_monitoring_config.py)."""

import json
import re
import time

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testing import signals
from tests.conftest import NativeStack
from tests.http_api import upload, wait_finished
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


@pytest.fixture(scope="module")
def prometheus(native_stack: NativeStack) -> Prometheus:
    return Prometheus(f"http://127.0.0.1:{native_stack.env['PROMETHEUS_PORT']}")


def test_every_target_is_up_and_reaches_its_server(prometheus: Prometheus) -> None:
    health = prometheus.target_health()
    assert_every_target_reaches_its_server(prometheus, health)
    assert prometheus.query('ALERTS{alertstate="firing"}') == [], "no alert fires when healthy"


def exported(url: str, name: str, **labels: str) -> float:
    """The sum of a sample's values as a process exports it now (its own /metrics). Prometheus
    may still show the previous process's series for 5 minutes after a restart of the stack."""
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


@pytest.fixture(scope="module")
def processed_upload(
    native_stack: NativeStack, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, float]:
    """One upload processed by the real worker: what the worker and web exported before and
    after it."""
    worker = f"http://127.0.0.1:{native_stack.env['WORKER_METRICS_PORT']}/metrics"
    web = f"http://127.0.0.1:{native_stack.env['WEB_PORT']}/metrics"

    def counts() -> dict[str, float]:
        return {
            "runs": exported(worker, "audio_runs_finished_total", preset="podcast", status="done"),
            "audio_s": exported(worker, "audio_processed_audio_seconds_total", preset="podcast"),
            "took": exported(worker, "audio_run_processing_seconds_count"),
            "created": exported(
                web, "django_http_responses_total_by_status_view_method_total", status="202"
            ),
        }

    before = counts()
    account = native_stack.signup("metered")
    source = signals.write(tmp_path_factory.mktemp("metered") / "a.wav", signals.program(4), "wav")
    with native_stack.client() as client:
        response = upload(client, account.auth, source)
        assert response.status_code == 202, response.text
        assert wait_finished(client, account.auth, response.json()["id"])["status"] == "done"
    return {"before": before, "after": counts()}


def test_a_processed_upload_shows_in_requests_jobs_and_audio_processed(
    native_stack: NativeStack, prometheus: Prometheus, processed_upload: dict
) -> None:
    before, after = processed_upload["before"], processed_upload["after"]
    assert after["runs"] == before["runs"] + 1  # web's 202, the worker's run: each counted once
    assert after["created"] >= before["created"] + 1  # (other tests may upload meanwhile)
    assert after["audio_s"] >= before["audio_s"] + 4  # a 4 s program
    assert after["took"] == before["took"] + 1
    # ...and scraped: Prometheus's latest sample is what the worker exports.
    runs = 'sum(audio_runs_finished_total{status="done",preset="podcast"})'
    assert prometheus.wait_for(runs, lambda v: v == after["runs"]) == after["runs"]
    # Read from the stack's database at each scrape: a fresh scrape shows the table's count.
    with psycopg.connect(native_stack.env["DATABASE_DIRECT_URL"]) as conn:
        done = conn.execute("SELECT count(*) FROM audio_job WHERE status = 'done'").fetchone()[0]
    assert prometheus.wait_for('max(audio_jobs{status="done"})', lambda v: v == done) == done


def test_every_dashboard_query_runs_and_names_metrics_prometheus_has(
    prometheus: Prometheus, processed_upload: dict
) -> None:
    """A renamed metric or a typo leaves a panel empty in Grafana without any error: each
    panel's query must evaluate, and every metric it names must exist in Prometheus."""
    assert dashboard_metrics_missing(prometheus) == {}


def test_metrics_are_served_on_web_port_but_not_through_nginx(native_stack: NativeStack) -> None:
    direct = httpx.get(f"http://127.0.0.1:{native_stack.env['WEB_PORT']}/metrics")
    assert direct.status_code == 200 and "django_http_requests" in direct.text
    with native_stack.client() as client:
        assert client.get("/metrics").status_code == 404
