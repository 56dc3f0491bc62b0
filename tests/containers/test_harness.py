"""The harness's own engine after a run that was killed before engine-down: dockerd restores that
run's networks, containers and volumes from its data root, and a network the compose files fix
the subnet of (the proxy's 172.28.0.0/24) then collides with the leftover ("Pool overlaps"), which
once failed CI. engine-up, starting the engine afresh, begins it empty but for its images.

Run by `make test-containers`; it kills and restarts the suite's engine, which the suite's later
modules then use as before.
"""

import os
import subprocess
import time
from pathlib import Path

from tests.docker_engine import docker, require_docker_engine
from tests.stack_env import REPO_DIR

HARNESS = REPO_DIR / "deployments" / "containers-harness"
SUBNET = "172.28.0.0/24"  # docker-compose.yml's PROXY_SUBNET default
PIDFILE = Path("/run/core-docker.pid")
BASE = "debian:trixie-slim"  # deployments/containers-harness/base-images makes it


def kill_engine() -> None:
    """What a killed session does to the engine: SIGKILL, so nothing is cleaned up."""
    pid = int(PIDFILE.read_text())
    os.kill(pid, 9)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"dockerd (pid {pid}) outlived SIGKILL for 30s"
        time.sleep(0.2)


def test_an_engine_started_afresh_drops_what_a_killed_run_left() -> None:
    require_docker_engine()
    images = set(docker("images", "-q").split())
    docker("network", "create", "--subnet", SUBNET, "killedrun_proxy")
    docker("volume", "create", "killedrun_data")
    docker("create", "--name", "killedrun_web", "--network", "killedrun_proxy", BASE, "true")
    kill_engine()

    started = subprocess.run(
        [str(HARNESS / "engine-up")], capture_output=True, text=True, timeout=120, check=False
    )
    assert started.returncode == 0, started.stderr

    created = subprocess.run(
        ["docker", "network", "create", "--subnet", SUBNET, "freshrun_proxy"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, f"the proxy's subnet is still taken: {created.stderr}"
    docker("network", "rm", "freshrun_proxy")
    assert "killedrun_web" not in docker("ps", "-a", "--format", "{{.Names}}")
    assert "killedrun_data" not in docker("volume", "ls", "-q")
    assert set(docker("images", "-q").split()) == images, "the images stay"
