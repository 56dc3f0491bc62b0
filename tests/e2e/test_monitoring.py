"""Metrics an operator can read (README, "Metrics"): the test stack runs with MONITORING=1, so a
real Prometheus (Debian's) scrapes web, events, the worker, Flower and an exporter per server
every 2 s, with the alert rules loaded. The rules themselves are unit-tested by promtool
(tests/unit/test_monitoring_config.py)."""

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testing import signals
from tests.conftest import NativeStack
from tests.http_api import upload, wait_finished
from tests.monitoring import (
    Prometheus,
    assert_every_target_reaches_its_server,
    dashboard_metrics_missing,
)


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
