"""The Makefile's operator targets, run as a user types them, against the test stack."""

import json
import os
import subprocess

import pytest

from tests.conftest import NativeStack
from tests.stack_env import ORIGINAL_ENVIRON, REPO_DIR, TEST_STACK_OVERRIDES

pytestmark = pytest.mark.e2e


def make(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in ORIGINAL_ENVIRON.items() if not k.startswith(("STACK_", "MAKE"))}
    env.update(TEST_STACK_OVERRIDES)  # the test stack's folder and ports, not var/'s
    return subprocess.run(
        ["make", "-s", *args], cwd=REPO_DIR, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def test_make_manage_runs_a_command_in_the_stacks_environment(native_stack: NativeStack) -> None:
    result = make("manage", "ARGS=stats --json")
    assert result.returncode == 0, result.stdout + result.stderr
    stats = json.loads(result.stdout[result.stdout.index("{") :])
    assert set(stats["jobs"]["total"]) == {"queued", "processing", "done", "failed", "canceled"}


def test_make_ps_reports_every_service_healthy(native_stack: NativeStack) -> None:
    result = make("ps")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    assert {row[0] for row in rows} >= {"web", "events", "celery_worker", "nginx", "prometheus"}
    assert all(row[2] == "healthy" for row in rows), result.stdout
    assert os.environ.get("MONITORING") == "1"  # the test stack runs the monitoring services
