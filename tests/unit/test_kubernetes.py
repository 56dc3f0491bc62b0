"""The Kubernetes manifests (deployments/kubernetes), checked offline: no cluster runs here.

The prod overlay is rendered with kustomize (kubectl's), validated against the API schemas of
Kubernetes 1.32 by kubernetes-validate (strict: no unknown field), and checked by checkov's
policies: no failure, and no skip but the two the base justifies. Then what the policies cannot
know: the pods run the same scripts as compose, read secrets the way file-env does, and keep the
shape the issue asked for (one Recreate beat, an HPA on web, probes and limits everywhere).
"""

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.stack_env import REPO_DIR

K8S = REPO_DIR / "deployments" / "kubernetes"
KUBERNETES_VERSION = "1.32.0"
CHECKS = ("uv", "run", "--project", str(K8S / "checks"), "--locked", "--quiet")
JUSTIFIED_SKIPS = {"CKV_K8S_43", "CKV_K8S_40"}


def run(*command: str) -> subprocess.CompletedProcess[str]:
    uv = REPO_DIR / ".tools" / "bin" / "uv"
    argv = [str(uv), *command[1:]] if command[0] == "uv" else list(command)
    # The checkers' virtualenv in var/, not by their pyproject (the linters walk deployments/).
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(REPO_DIR / "var" / "kubernetes-checks")}
    return subprocess.run(argv, cwd=REPO_DIR, env=env, capture_output=True, text=True, timeout=600)


@cache
def rendered(overlay: str = "prod") -> Path:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl (its built-in kustomize renders the manifests) is not installed")
    done = run(
        "kubectl",
        "kustomize",
        "--load-restrictor",
        "LoadRestrictionsNone",
        str(K8S / "overlays" / overlay),
    )
    assert done.returncode == 0, done.stderr
    path = REPO_DIR / "var" / "kubernetes" / f"{overlay}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(done.stdout)
    return path


def documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered().read_text()) if doc]


def workloads() -> dict[str, dict]:
    kinds = {"Deployment", "StatefulSet", "Job"}
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] in kinds}


def test_manifests_match_the_kubernetes_api_schemas() -> None:
    done = run(
        *CHECKS,
        "kubernetes-validate",
        "--kubernetes-version",
        KUBERNETES_VERSION,
        "--strict",
        str(rendered()),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Only cert-manager's ClusterIssuer (a CRD) has no schema to validate against.
    warnings = [line for line in done.stdout.splitlines() if line.startswith("WARN")]
    assert len(warnings) == 1 and "ClusterIssuer" in warnings[0], done.stdout
    assert "INFO" in done.stdout and "ERROR" not in done.stdout


def test_checkov_finds_no_failure_and_only_justified_skips() -> None:
    done = run(
        *CHECKS,
        "checkov",
        "--framework",
        "kubernetes",
        "--file",
        str(rendered()),
        "--quiet",
        "--output",
        "json",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["summary"]["failed"] == 0, report["results"]["failed_checks"]
    assert report["summary"]["passed"] > 500, report["summary"]
    skipped = report["results"].get("skipped_checks", [])
    assert {check["check_id"] for check in skipped} <= JUSTIFIED_SKIPS, skipped
    assert all(len(check["suppress_comment"]) > 40 for check in skipped)


def test_pods_run_the_scripts_compose_runs() -> None:
    compose_root = REPO_DIR / "deployments" / "compose"
    scripts = set()
    for workload in workloads().values():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            probes = [container.get(p, {}) for p in ("readinessProbe", "livenessProbe")]
            words = [*container.get("command", []), *container.get("args", [])]
            words += [w for probe in probes for w in probe.get("exec", {}).get("command", [])]
            scripts |= {w for w in words if w.startswith("/deployments/compose/")}
    for script in scripts:
        assert (compose_root / script.removeprefix("/deployments/compose/")).is_file(), script
    assert "/deployments/compose/django/start" in scripts
    assert "/deployments/compose/django/celery/worker/healthcheck" in scripts


def test_secrets_are_files_that_file_env_reads() -> None:
    file_env = (REPO_DIR / "deployments" / "compose" / "file-env").read_text()
    listed = re.search(r'secret_variables="([^"]+)"', file_env)
    assert listed, "file-env lists no secret_variables"
    secret_variables = set(listed.group(1).split())
    file_vars = set()
    for doc in documents():
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("core-settings"):
            file_vars |= {k for k in doc["data"] if k.endswith("_FILE")}
            assert not secret_variables & set(doc["data"]), "a secret in the settings ConfigMap"
    for workload in workloads().values():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            file_vars |= {
                e["name"] for e in container.get("env", []) if e["name"].endswith("_FILE")
            }
            assert not secret_variables & {e["name"] for e in container.get("env", [])}
    # POSTGRES_PASSWORD_FILE is the official image's own; all others go through file-env.
    assert {v.removesuffix("_FILE") for v in file_vars} <= secret_variables
    assert "SECRET_KEY_FILE" in file_vars and "DATABASE_DIRECT_URL_FILE" in file_vars


def test_every_pod_is_locked_down_probed_and_bounded() -> None:
    for name, workload in workloads().items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), name
            if workload["kind"] != "Job":
                assert "readinessProbe" in container and "livenessProbe" in container, name


def test_the_shape_the_stack_needs() -> None:
    loads = workloads()
    assert loads["celery-beat"]["spec"]["replicas"] == 1
    assert loads["celery-beat"]["spec"]["strategy"]["type"] == "Recreate"
    assert loads["web"]["spec"]["replicas"] == 3 and loads["celery-worker"]["spec"]["replicas"] == 3
    assert loads["db"]["kind"] == "StatefulSet" and loads["redis-broker"]["kind"] == "StatefulSet"
    assert loads["release"]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "/deployments/compose/django/release"
    ]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents()}
    assert ("HorizontalPodAutoscaler", "web") in kinds
    assert {("PodDisruptionBudget", n) for n in ("web", "celery-worker", "pgbouncer")} <= kinds
    ingress = next(d for d in documents() if d["kind"] == "Ingress")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    image = loads["web"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/core/django:1.0.0"
    # Nothing reaches a pod unless a policy allows it; the database only from PgBouncer/release.
    policies = {d["metadata"]["name"]: d for d in documents() if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    db_from = policies["db-from-pgbouncer-and-release"]["spec"]["ingress"][0]["from"]
    assert [f["podSelector"]["matchLabels"] for f in db_from] == [
        {"app.kubernetes.io/name": "pgbouncer"},
        {"core/db-owner": "true"},
    ]
