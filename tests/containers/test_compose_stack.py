"""The production compose stack, built and run for real (the Docker Engine + `docker compose`).

Run by `make test-containers` (after the harness has started the engine and the base images);
`make test` runs the unit, integration and e2e tiers, not this one; `.ci/run` runs both.
"""

import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.acme import NAME, RequestsFlowing, wait_for_new_certificate
from tests.docker_engine import (
    HTTP_PORT,
    HTTPS_PORT,
    Load,
    compose_environ,
    docker,
    require_docker_engine,
    write_env_file,
)
from tests.monitoring import (
    Prometheus,
    assert_every_target_reaches_its_server,
    dashboard_metrics_missing,
)
from tests.stack_env import REPO_DIR

PROJECT = "coretest"
PROMETHEUS_PORT = 19090
ARTIFACTS = REPO_DIR / "test-artifacts"
# The production stack plus Pebble, the ACME test server (test only; see that file).
PEBBLE = {"COMPOSE_FILE": "docker-compose.yml:deployments/containers-harness/pebble.yml"}
# Teardown takes the monitoring profile's containers too.
MONITORING = {"COMPOSE_PROFILES": "monitoring"}


class ComposeStack:
    def __init__(self, env_file: Path) -> None:
        self.env_file = env_file
        self.env = {
            **compose_environ(),
            "ENV_FILE": str(env_file),
            "COMPOSE_FILE": "docker-compose.yml",
        }
        self.timings: dict[str, float] = {}

    def compose(self, *args: str, check: bool = True, timeout: float = 900, **env: str) -> str:
        return docker(
            "compose",
            "-p",
            PROJECT,
            "--env-file",
            str(self.env_file),
            *args,
            check=check,
            timeout=timeout,
            cwd=REPO_DIR,
            env={**self.env, **env},
        )

    def wait_healthy(self) -> float:
        started = time.monotonic()
        self.compose("up", "-d", "--wait", "--wait-timeout", "600")
        return time.monotonic() - started

    def states(self) -> dict[str, str]:
        out = self.compose("ps", "--all", "--format", "json")
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        if len(rows) == 1 and isinstance(rows[0], list):
            rows = rows[0]
        return {row["Service"]: f"{row['State']}/{row.get('Health', '')}" for row in rows}

    def tls(self) -> ssl.SSLContext:
        """nginx's placeholder certificate (made for SERVER_NAME and localhost) and its CA."""
        pem = self.compose("exec", "-T", "nginx", "cat", f"/etc/letsencrypt/live/{NAME}/ca.pem")
        return ssl.create_default_context(cadata=pem)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"https://localhost:{HTTPS_PORT}", verify=self.tls(), timeout=30
        )


@pytest.fixture(scope="module")
def prod_stack() -> Iterator[tuple[ComposeStack, dict[str, str]]]:
    require_docker_engine()
    env_file, values = write_env_file()
    stack = ComposeStack(env_file)
    stack.compose("down", "-v", "--remove-orphans", check=False, **PEBBLE, **MONITORING)
    try:
        started = time.monotonic()
        stack.compose("build", timeout=1800)
        stack.timings["build_s"] = round(time.monotonic() - started, 1)
        stack.timings["up_to_healthy_s"] = round(stack.wait_healthy(), 1)
        yield stack, values
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        sizes = {}
        for image in (
            "core-django:prod",
            "core-django:dev",
            "core-nginx:latest",
            "core-pgbouncer:latest",
            "core-monitoring:latest",
        ):
            out = docker("image", "inspect", image, "--format", "{{.Size}}", check=False).strip()
            if out.isdigit():
                sizes[image] = round(int(out) / 1e6, 1)
        logs = stack.compose("logs", "--no-color", "--tail", "200", check=False)
        (ARTIFACTS / "compose-prod.log").write_text(logs)
        (ARTIFACTS / "containers.json").write_text(
            json.dumps({"timings": stack.timings, "image_sizes_mb": sizes}, indent=2)
        )
        print(json.dumps({"timings": stack.timings, "image_sizes_mb": sizes}))
        stack.compose("down", "-v", "--remove-orphans", check=False, **PEBBLE, **MONITORING)


def test_every_service_is_healthy(prod_stack) -> None:
    stack, _ = prod_stack
    states = stack.states()
    long_running = {s: v for s, v in states.items() if s != "release"}
    assert states["release"].startswith("exited"), states
    assert all(v == "running/healthy" for s, v in long_running.items() if s != "certbot"), states
    assert states["certbot"].startswith("running"), states


def test_readyz_static_flower_and_a_task_over_https(prod_stack) -> None:
    stack, values = prod_stack
    with stack.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        static = client.get("/static/admin/css/base.css")
        assert static.status_code == 200 and static.headers["x-served-by"] == "nginx"
        # A page: its {% static %} names come from the manifest the release step collected.
        login = client.get("/accounts/login/")
        assert login.status_code == 200, login.text
        css = re.search(r'href="(/static/audio/app\.[0-9a-f]{12}\.css)"', login.text)
        assert css and client.get(css.group(1)).status_code == 200, login.text
        assert client.get("/flower/").status_code == 401
        task = client.get(
            "/diagnostics/task", headers={"X-Diagnostics-Token": values["DIAGNOSTICS_TOKEN"]}
        )
        assert task.status_code == 200 and task.json()["ok"] is True, task.text
    redirect = httpx.get(f"http://localhost:{HTTP_PORT}/x")
    assert redirect.status_code == 301
    assert redirect.headers["location"] == f"https://localhost:{HTTPS_PORT}/x"


def test_the_seed_console_and_web_run_as_non_root(prod_stack) -> None:
    """`docker exec -it django_app bash` (the seed's command) reaches a shell with web's image and
    settings, where manage.py works; web's own replicas run as non-root too."""
    stack, _ = prod_stack
    assert docker("exec", "django_app", "id", "-u").strip() != "0"
    assert docker("exec", "django_app", "bash", "-c", "echo ok").strip() == "ok"
    migrations = docker("exec", "django_app", "python", "manage.py", "showmigrations", "audio")
    assert "[X] 0001_initial" in migrations, migrations
    assert stack.compose("exec", "-T", "web", "id", "-u").strip() != "0"


def test_restart_and_down_up_keep_the_database(prod_stack) -> None:
    stack, _ = prod_stack
    psql = ("exec", "-T", "db", "psql", "-U", "core", "-d", "core", "-tAc")
    stack.compose(*psql, "CREATE TABLE survives (v text); INSERT INTO survives VALUES ('kept')")
    started = time.monotonic()
    stack.compose("restart", timeout=600)
    stack.wait_healthy()
    stack.timings["restart_to_healthy_s"] = round(time.monotonic() - started, 1)
    stack.compose("down")
    stack.timings["down_up_to_healthy_s"] = round(stack.wait_healthy(), 1)
    assert stack.compose(*psql, "SELECT v FROM survives").strip() == "kept"
    # Freshly started workers on a loaded 2-core host may miss the 2 s check deadline once.
    with stack.client() as client:
        deadline = time.monotonic() + 30
        while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(1)
    assert ready.status_code == 200, (ready.status_code, ready.text, stack.states())


def running(stack: ComposeStack, service: str) -> list[str]:
    return stack.compose("ps", "--quiet", "--status", "running", service).split()


def inspect(container: str, fmt: str) -> str:
    return docker("inspect", "--format", fmt, container).strip()


def test_a_killed_web_or_worker_process_is_restarted_by_the_engine(prod_stack) -> None:
    """`restart: unless-stopped`, applied by the engine: a container whose main process is killed
    from the host (`docker kill` would count as a manual stop) comes back and turns healthy, and
    the site and a task round trip work again."""
    stack, values = prod_stack
    for service in ("web", "celery_worker"):
        container = running(stack, service)[0]
        os.kill(int(inspect(container, "{{.State.Pid}}")), signal.SIGKILL)
        deadline = time.monotonic() + 180
        fmt = "{{.RestartCount}} {{.State.Status}} {{.State.Health.Status}}"
        while (state := inspect(container, fmt)).split()[1:] != ["running", "healthy"] or (
            state.startswith("0 ")
        ):
            assert time.monotonic() < deadline, (service, state)
            time.sleep(1)
    with stack.client() as client:
        token = {"X-Diagnostics-Token": values["DIAGNOSTICS_TOKEN"]}
        deadline = time.monotonic() + 60
        while (task := client.get("/diagnostics/task", headers=token)).status_code != 200:
            assert time.monotonic() < deadline, task.text
            time.sleep(2)


def deploy(stack: ComposeStack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REPO_DIR / "deployments" / "compose" / "deploy", "--no-build"],
        env={
            **stack.env,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "COMPOSE_ENV_FILES": str(stack.env_file),
        },
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def tag_new_image(label: str, *instructions: str) -> str:
    """A new image under web's tag (what a deploy rolls out): web's image plus a label."""
    dockerfile = "\n".join(("FROM core-django:prod", f"LABEL test.deploy={label}", *instructions))
    docker(
        "build",
        "--quiet",
        "--tag",
        "core-django:prod",
        "-",
        input=dockerfile,
        env={**compose_environ(), "DOCKER_BUILDKIT": "0"},
    )
    return inspect("core-django:prod", "{{.Id}}")


def upstreams_of(stack: ComposeStack, marker: str, requests: int) -> set[str]:
    """The web addresses nginx sent the `requests` requests whose URI carries `marker` to (its
    JSON access log, which it writes at least once a second)."""
    deadline = time.monotonic() + 10
    while True:
        lines = stack.compose("logs", "--no-color", "--no-log-prefix", "nginx").splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{") and marker in line]
        if len(entries) >= requests or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(entries) == requests, f"{len(entries)} access lines for {marker}, not {requests}"
    return {entry["upstream"].rsplit(":", 1)[0] for entry in entries}


def addresses(containers: list[str]) -> set[str]:
    fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
    return {ip for container in containers for ip in inspect(container, fmt).split()}


def test_a_deploy_that_does_not_become_healthy_stops_with_the_old_replicas_serving(
    prod_stack,
) -> None:
    """Health gating: a new image whose web cannot start (its WSGI module raises on import, after
    the release step, which does not load it, has passed) never replaces a running replica; the
    deploy fails, saying so."""
    stack, _ = prod_stack
    good = inspect("core-django:prod", "{{.Id}}")
    stack.compose("up", "--detach", "--no-deps", "--wait", "--scale", "web=2", "web")
    before = sorted(running(stack, "web"))
    try:
        tag_new_image("broken", """RUN echo 'raise RuntimeError("broken build")' >> core/wsgi.py""")
        with Load(f"https://localhost:{HTTPS_PORT}", stack.tls()) as load:
            result = deploy(stack)
        assert result.returncode != 0, result.stderr
        assert "did not become healthy; the old ones still serve" in result.stderr, result.stderr
        assert sorted(running(stack, "web")) == before
        assert load.failures == [] and load.count > 20, (load.summary(), load.failures[:5])
    finally:
        docker("tag", good, "core-django:prod")


def test_a_deploy_of_a_new_image_under_load_fails_no_request(prod_stack) -> None:
    """`docker compose up -d --scale web=2`: nginx spreads requests over both replicas. Then a new
    image rolled out by deployments/compose/deploy while requests flow: every web, events and
    worker container replaced, nginx neither restarted nor reloaded yet sending the last
    requests to the new replicas' addresses, and not one request failed."""
    stack, _ = prod_stack
    stack.compose("up", "--detach", "--no-deps", "--wait", "--scale", "web=2", "web")
    old = {service: running(stack, service) for service in ("web", "events", "celery_worker")}
    assert len(old["web"]) == 2
    with stack.client() as client:
        for _ in range(12):
            assert client.get("/healthz?spread").status_code == 200
    assert len(upstreams_of(stack, "/healthz?spread", 12)) == 2
    nginx = running(stack, "nginx")[0]
    nginx_started = inspect(nginx, "{{.State.StartedAt}}")

    new_image = tag_new_image(secrets.token_hex(4))
    started = time.monotonic()
    with Load(f"https://localhost:{HTTPS_PORT}", stack.tls()) as load:
        result = deploy(stack)
        deploy_s = time.monotonic() - started
        with stack.client() as client:
            for _ in range(12):
                assert client.get("/healthz?after").status_code == 200
    assert result.returncode == 0, result.stdout + result.stderr
    assert load.failures == [] and load.count > 100, (load.summary(), load.failures[:5])

    for service, containers in old.items():
        now = running(stack, service)
        assert len(now) == len(containers) and not set(now) & set(containers), (service, now)
        assert {inspect(c, "{{.Image}}") for c in now} == {new_image}, service
    assert running(stack, "nginx") == [nginx]
    assert inspect(nginx, "{{.State.StartedAt}}") == nginx_started
    assert upstreams_of(stack, "/healthz?after", 12) <= addresses(running(stack, "web"))
    stack.timings["deploy"] = {"seconds": round(deploy_s, 1), "web_replicas": 2, **load.summary()}


def test_lets_encrypt_issues_and_renews_through_nginx(prod_stack, tmp_path) -> None:
    """Last in this module (it replaces the placeholder certificate): the project's own obtain
    script against Pebble (Let's Encrypt's ACME test server, on a test network nginx joins),
    HTTP-01 through nginx's ACME location; the chain served is Pebble's, verified with its root;
    then a forced renewal and nginx's reload while requests flow, none failing."""
    stack, _ = prod_stack
    stack.compose("up", "-d", "--build", "--wait", "pebble", "nginx", **PEBBLE)
    obtain = subprocess.run(
        [
            REPO_DIR / "deployments" / "compose" / "certbot" / "obtain",
            "--server",
            "https://pebble:14000/dir",
        ],
        env={
            **stack.env,
            **PEBBLE,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "COMPOSE_ENV_FILES": str(stack.env_file),
            "SERVER_NAME": NAME,
            "LETSENCRYPT_EMAIL": "ops@example.test",
        },
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert obtain.returncode == 0, obtain.stdout + obtain.stderr
    pebble_ca = stack.compose("exec", "-T", "pebble", "cat", "/pebble-ca/ca.pem", **PEBBLE)
    api_ca = ssl.create_default_context(cadata=pebble_ca)
    root = httpx.get("https://127.0.0.1:18500/roots/0", verify=api_ca).content
    (tmp_path / "root.pem").write_bytes(root)
    first = wait_for_new_certificate(HTTPS_PORT, tmp_path / "root.pem", previous=None)
    assert "Pebble Intermediate" in first.issuer.rfc4514_string()

    with RequestsFlowing(f"https://localhost:{HTTPS_PORT}") as flow:
        renew = (
            "run",
            "--rm",
            "--no-deps",
            "--entrypoint",
            "/deployments/compose/certbot/certify",
            "certbot",
            "renew",
            "--force-renewal",
            "--no-random-sleep-on-renew",
        )
        renewed = stack.compose(*renew, **PEBBLE)
        stack.compose("exec", "nginx", "/deployments/compose/nginx/reload", **PEBBLE)
        try:
            second = wait_for_new_certificate(
                HTTPS_PORT, tmp_path / "root.pem", previous=first.serial_number
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; certbot said:\n{renewed}") from None
        time.sleep(1)
    assert flow.failures == [] and flow.count > 20, (flow.count, flow.failures[:3])
    assert flow.retried <= 1, flow.retried  # one reload closes this client's connection once
    assert "Pebble Intermediate" in second.issuer.rfc4514_string()
    stack.timings["lets_encrypt"] = {
        "requests_during_renewal": flow.count,
        "failed": 0,
        "retried_on_closed_keepalive": flow.retried,
        "issuer": first.issuer.rfc4514_string(),
    }


MONITORED_BY = (
    "prometheus",
    "postgres_exporter",
    "pgbouncer_exporter",
    "redis_broker_exporter",
    "redis_cache_exporter",
    "nginx_exporter",
    "node_exporter",
)


def test_monitoring_profile_scrapes_every_target(prod_stack) -> None:
    """Last (after the certificate test; its containers go with the stack's teardown):
    `--profile monitoring`: Prometheus and the exporters (the monitoring image, built here)
    beside the running stack; every target up, every exporter reaching its server, and every
    dashboard query naming metrics Prometheus has. (Grafana's image cannot be had here: no
    registry, no Grafana package in Debian, PyPI or npm; its provisioning is checked offline.)"""
    stack, values = prod_stack
    monitoring = ("--profile", "monitoring")
    started = time.monotonic()
    stack.compose(*monitoring, "build", *MONITORED_BY[:1], timeout=1800)
    stack.compose(
        *monitoring,
        "up",
        "-d",
        "--wait",
        "--wait-timeout",
        "300",
        *MONITORED_BY,
        PROMETHEUS_PUBLISH=str(PROMETHEUS_PORT),
        PROMETHEUS_SCRAPE_INTERVAL="2s",
    )
    stack.timings["monitoring_up_s"] = round(time.monotonic() - started, 1)
    prometheus = Prometheus(f"http://127.0.0.1:{PROMETHEUS_PORT}")
    assert_every_target_reaches_its_server(prometheus, prometheus.target_health())
    # A page through every middleware and a Celery task, so that those metrics exist. The
    # task's round trip may time out while the restarted stack and the monitoring containers
    # still load both cores: try for up to a minute. (nginx now serves the ACME test server's
    # certificate for another name: TLS is not what this test is about.)
    with httpx.Client(
        base_url=f"https://localhost:{HTTPS_PORT}", verify=False, timeout=30
    ) as client:
        assert client.get("/accounts/login/").status_code == 200
        token = {"X-Diagnostics-Token": values["DIAGNOSTICS_TOKEN"]}
        deadline = time.monotonic() + 60
        while (task := client.get("/diagnostics/task", headers=token)).status_code != 200:
            assert time.monotonic() < deadline, task.text
            time.sleep(2)
    # Only once a job has run (the native suite processes one and checks these too).
    after_a_job = {
        "Run processing time (p50, p90)",
        "Runs finished per minute",
        "Audio processed (seconds of audio per second)",
    }
    deadline = time.monotonic() + 30
    while (missing := dashboard_metrics_missing(prometheus)).keys() - after_a_job:
        assert time.monotonic() < deadline, missing
        time.sleep(2)
