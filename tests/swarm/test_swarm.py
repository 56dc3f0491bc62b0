"""The stack on Docker Swarm, deployed for real: a single-node swarm on the harness's own engine,
the stack rendered from docker-compose.yml by deployments/swarm/render and deployed by
deployments/swarm/deploy; /readyz over TLS, a job end to end across replicas, a rolling update
of web under load with no failed request, workers scaled 2 -> 3 -> 1, and the swarm left.

Run by `make test-swarm` (after the harness has started the engine and the base images).
"""

import email
import json
import re
import ssl
import subprocess
import time
from collections.abc import Iterator
from email.policy import default
from pathlib import Path

import httpx
import pytest

from testing import signals
from tests.acme import NAME
from tests.docker_engine import (
    Load,
    compose_environ,
    docker,
    require_docker_engine,
    write_env_file,
)
from tests.http_api import upload, wait_finished
from tests.stack_env import REPO_DIR

STACK = "coreswarm"
HTTP_PORT, HTTPS_PORT = 28080, 28443
BASE_URL = f"https://localhost:{HTTPS_PORT}"
ARTIFACTS = REPO_DIR / "test-artifacts"
PASSWORD = "a-Long-enough-passw0rd"


class Swarm:
    def __init__(self, env_file: Path) -> None:
        self.env_file = env_file
        self.env = {**compose_environ(), "COMPOSE_FILE": "docker-compose.yml"}
        self.timings: dict[str, object] = {}

    def deploy(self) -> str:
        script = REPO_DIR / "deployments" / "swarm" / "deploy"
        done = subprocess.run(
            [script, STACK, "--env-file", str(self.env_file)],
            env=self.env,
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def tasks(self, service: str) -> list[dict]:
        out = docker("service", "ps", f"{STACK}_{service}", "--format", "{{json .}}")
        return [json.loads(line) for line in out.splitlines()]

    def running(self, service: str) -> list[str]:
        """Containers of the service's running tasks (healthy ones, where it has a healthcheck)."""
        out = docker(
            "ps",
            "--filter",
            f"label=com.docker.swarm.service.name={STACK}_{service}",
            "--format",
            "{{.ID}} {{.Status}}",
        )
        return [
            line.split()[0]
            for line in out.splitlines()
            if "Up" in line and "(health: starting)" not in line and "unhealthy" not in line
        ]

    def converge(self, service: str, replicas: int, timeout: float = 300) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(running := self.running(service)) != replicas:
            assert time.monotonic() < deadline, (service, running, self.tasks(service)[:6])
            time.sleep(2)
        return running

    def exec(self, service: str, *command: str) -> str:
        return docker("exec", self.running(service)[0], *command)

    def tls(self) -> ssl.SSLContext:
        """nginx's placeholder certificate's CA (made by its start script)."""
        pem = self.exec("nginx", "cat", f"/etc/letsencrypt/live/{NAME}/ca.pem")
        return ssl.create_default_context(cadata=pem)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=BASE_URL, verify=self.tls(), timeout=30)


def leave_and_clean() -> None:
    """Leave the swarm (its services and tasks go) and remove the stack's volumes."""
    docker("swarm", "leave", "--force", check=False)
    label = f"label=com.docker.stack.namespace={STACK}"
    deadline = time.monotonic() + 120
    while containers := docker("ps", "-aq", "--filter", label).split():
        if time.monotonic() > deadline:
            docker("rm", "--force", *containers)
        time.sleep(2)
    if volumes := docker("volume", "ls", "-q", "--filter", label).split():
        docker("volume", "rm", *volumes)


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    require_docker_engine()
    env_file, _ = write_env_file(
        "swarm.env",
        NGINX_HTTP_PUBLISH=str(HTTP_PORT),
        NGINX_HTTPS_PUBLISH=str(HTTPS_PORT),
        CSRF_TRUSTED_ORIGINS=f"https://localhost:{HTTPS_PORT}",
        WEB_REPLICAS="2",
        WORKER_REPLICAS="2",
        CELERY_WORKER_CONCURRENCY="1",
        WEB_CONCURRENCY="2",
    )
    swarm = Swarm(env_file)
    leave_and_clean()  # what an interrupted run left, its database volume included
    docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        started = time.monotonic()
        docker(
            "compose",
            "--env-file",
            str(env_file),
            "build",
            cwd=REPO_DIR,
            env=swarm.env,
            timeout=1800,
        )
        swarm.timings["build_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        swarm.deploy()
        for service, replicas in (
            ("db", 1),
            ("pgbouncer", 1),
            ("redis_broker", 1),
            ("redis_cache", 1),
            ("web", 2),
            ("events", 1),
            ("celery_worker", 2),
            ("celery_beat", 1),
            ("flower", 1),
            ("nginx", 1),
        ):
            swarm.converge(service, replicas)
        swarm.timings["deploy_to_healthy_s"] = round(time.monotonic() - started, 1)
        yield swarm
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "swarm.json").write_text(json.dumps(swarm.timings, indent=2))
        print(json.dumps(swarm.timings))
        docker("stack", "rm", STACK, check=False)
        leave_and_clean()


def test_readyz_over_tls_and_secrets_are_files(swarm: Swarm) -> None:
    with swarm.client() as client:
        deadline = time.monotonic() + 120
        while (ready := client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(2)
        assert client.get("/static/admin/css/base.css").headers["x-served-by"] == "nginx"
    # Swarm secrets reach each service as files, the variables name the files, no value inline.
    env = swarm.exec("web", "env")
    assert "SECRET_KEY_FILE=/run/secrets/secret_key" in env
    assert "\nSECRET_KEY=" not in env and "DATABASE_URL=" not in env.replace("_URL_FILE", "")
    assert swarm.exec("web", "ls", "/run/secrets").split() == sorted(
        [
            "cache_url",
            "celery_broker_url",
            "celery_result_backend",
            "database_url",
            "diagnostics_token",
            "email_url",
            "secret_key",
        ]
    )
    # nginx's and PgBouncer's templates are Swarm configs (a change rolls out, no new image).
    fmt = "{{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{.File.Name}} {{end}}"
    targets = docker("service", "inspect", f"{STACK}_nginx", "--format", fmt).split()
    assert "/deployments/compose/nginx/nginx.conf.template" in targets, targets
    assert swarm.exec("pgbouncer", "ls", "/run/secrets").split() == sorted(
        ["app_db_password", "pgbouncer_admin_password", "postgres_password"]
    )


def verification_path(address: str) -> str:
    """The link of the verification email, which the worker prints (EMAIL_URL=console://; its
    stdout reaches the JSON log through Celery's redirection), parsed as the MIME message it is."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        logs = subprocess.run(
            ["docker", "service", "logs", "--raw", f"{STACK}_celery_worker"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        for line in (logs.stdout + logs.stderr).splitlines():  # log records go to stderr
            if line.startswith("{") and f"To: {address}" in line:
                message = email.message_from_string(json.loads(line)["message"], policy=default)
                body = message.get_body(("plain",)).get_content()
                return re.search(r"https://[^/\s]+(/accounts/verify/\S+)", body).group(1)
        time.sleep(2)
    raise AssertionError(f"no verification email to {address} in the worker's logs")


def test_a_job_end_to_end_across_replicas(swarm: Swarm, tmp_path) -> None:
    """Sign-up, the mailed link, an upload to one web replica, processing on one of two workers,
    the renditions downloaded through nginx (X-Accel-Redirect from the media volume they share)."""
    with swarm.client() as client:
        username = f"swarm-{int(time.time())}"
        response = client.post(
            "/api/auth/signup/",
            json={
                "username": username,
                "email": f"{username}@example.com",
                "password": PASSWORD,
            },
        )
        assert response.status_code == 201, response.text
        auth = {"Authorization": f"Token {response.json()['token']}"}
        assert client.get(verification_path(f"{username}@example.com")).status_code == 200
        source = signals.write(tmp_path / "tone.wav", signals.tone(4))
        created = upload(client, auth, source)
        assert created.status_code == 202, created.text
        job = wait_finished(client, auth, created.json()["id"])
        assert job["status"] == "done", job
        assert sorted(r["format"] for r in job["renditions"]) == ["aac", "mp3", "opus"]
        for rendition in job["renditions"]:
            download = client.get(rendition["download_url"], headers=auth)
            assert download.status_code == 200 and len(download.content) > 1000, rendition
    # nginx spread this user's API requests over both web replicas (its access log is written
    # at least once a second).
    deadline = time.monotonic() + 10
    while True:
        logs = docker("service", "logs", "--raw", f"{STACK}_nginx").splitlines()
        upstreams = {
            json.loads(line)["upstream"]
            for line in logs
            if line.startswith("{") and f"/api/jobs/{job['id']}/" in line
        }
        if len(upstreams) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(upstreams) == 2, upstreams


def test_rolling_update_of_web_under_load_fails_no_request(swarm: Swarm) -> None:
    """A new image for web rolled out by Swarm (update_config: one task at a time, started
    first, healthy before the old one stops) while requests flow through nginx: none fails."""
    before = set(swarm.running("web"))
    dockerfile = "FROM core-django:prod\nLABEL test.swarm-update=1\n"
    docker(
        "build",
        "--quiet",
        "--tag",
        "core-django:swarm-update",
        "-",
        input=dockerfile,
        env={**compose_environ(), "DOCKER_BUILDKIT": "0"},
    )
    with Load(BASE_URL, swarm.tls()) as load:
        started = time.monotonic()
        docker(
            "service",
            "update",
            "--quiet",
            "--no-resolve-image",
            "--image",
            "core-django:swarm-update",
            f"{STACK}_web",
            timeout=600,
        )
        update_s = time.monotonic() - started
        time.sleep(3)
    after = swarm.converge("web", 2)
    assert not before & set(after)
    images = {docker("inspect", "--format", "{{.Config.Image}}", c).strip() for c in after}
    assert images == {"core-django:swarm-update"}, images
    assert load.failures == [] and load.count > 100, (load.summary(), load.failures[:5])
    swarm.timings["rolling_update"] = {"seconds": round(update_s, 1), **load.summary()}


def test_workers_scale_2_3_1(swarm: Swarm) -> None:
    """`docker service scale`: the workers Celery sees follow (ping answered by each)."""
    counts = {}
    for replicas in (3, 1):
        started = time.monotonic()
        docker("service", "scale", "--detach", f"{STACK}_celery_worker={replicas}")
        swarm.converge("celery_worker", replicas)
        deadline = time.monotonic() + 60
        while True:
            ping = swarm.exec(
                "django_app", "celery", "-A", "core", "inspect", "ping", "--json", "--timeout", "3"
            )
            answered = len(json.loads(ping.strip().splitlines()[-1]))
            if answered == replicas:
                break
            assert time.monotonic() < deadline, (replicas, ping)
            time.sleep(2)
        counts[replicas] = round(time.monotonic() - started, 1)
    swarm.timings["worker_scale_s"] = counts
