"""Talking to a running stack's HTTP API (native, compose or Swarm): upload a file, wait for its
job, and the paths that take credentials (which nginx rate-limits)."""

import time
from pathlib import Path

import httpx

CREDENTIALS_PATHS = [
    "/admin/login/",
    "/accounts/login/",
    "/accounts/signup/",
    "/accounts/password_reset/",
    "/api/auth/token/",
]


def upload(client: httpx.Client, auth: dict[str, str], path: Path, preset: str = "podcast"):
    with path.open("rb") as f:
        return client.post(
            "/api/jobs/", headers=auth, data={"preset": preset}, files={"file": (path.name, f)}
        )


def wait_finished(client: httpx.Client, auth: dict[str, str], job_id: str) -> dict:
    deadline = time.monotonic() + 180
    seen = set()
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}/", headers=auth).json()
        seen.add((job["status"], job["phase"]))
        if job["status"] in {"done", "failed", "canceled"}:
            job["seen"] = seen
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {seen}")
