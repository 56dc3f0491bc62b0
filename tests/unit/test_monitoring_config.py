"""The monitoring configuration, offline: promtool's unit tests of every alert rule, and the Grafana
dashboard's JSON (the running Prometheus answers its queries in tests/e2e/test_monitoring.py)."""

import json
import re
import subprocess

from tests.stack_env import REPO_DIR

MONITORING = REPO_DIR / "deployments" / "compose" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "core-stack.json"


def test_alert_rules_fire_on_their_conditions_and_not_before() -> None:
    """promtool's unit tests (alerts.test.yml): every rule, its `for:` and its labels."""
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts.test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rules = re.findall(r"^\s+- alert: (\w+)", (MONITORING / "alerts.yml").read_text(), re.M)
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "alerts.test.yml").read_text()))
    assert set(rules) == tested, "every alert rule has a promtool test"


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"  # the provisioned data source's uid
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
    datasource = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    assert "uid: prometheus" in datasource.read_text()
