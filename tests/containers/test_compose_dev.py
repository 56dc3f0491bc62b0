"""The development compose stack: uvicorn --reload on the bind-mounted code, as a non-root user."""

import time
import uuid

import httpx

from tests.docker_engine import WORK, compose_environ, docker
from tests.stack_env import REPO_DIR

PROJECT = "coredevtest"
WEB_PORT = 18000


def compose(*args: str, check: bool = True, timeout: float = 900) -> str:
    env = {
        **compose_environ(),
        "ENV_FILE": str(WORK / "dev.env"),
        "COMPOSE_FILE": "docker-compose.yml:compose.dev.yml",
        "COMPOSE_PARALLEL_LIMIT": "1",
    }
    return docker(
        "compose",
        "-p",
        PROJECT,
        "--env-file",
        str(WORK / "dev.env"),
        *args,
        check=check,
        timeout=timeout,
        cwd=REPO_DIR,
        env=env,
    )


def wait_http(url: str, timeout: float = 120) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer 200 within {timeout}s")
        time.sleep(1)


def test_dev_stack_reloads_a_code_change() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    example = (REPO_DIR / ".env.example").read_text()
    (WORK / "dev.env").write_text(
        example + f"\nWEB_DEV_PUBLISH={WEB_PORT}\nFLOWER_DEV_PUBLISH=15555\n"
        "POSTGRES_DEV_PUBLISH=15432\nNGINX_HTTP_PUBLISH=18081\nNGINX_HTTPS_PUBLISH=18444\n"
    )
    probe = REPO_DIR / "app" / "core" / f"_reload_probe_{uuid.uuid4().hex[:8]}.py"
    compose("down", "-v", "--remove-orphans", check=False)
    try:
        compose("build", timeout=1800)  # every image it runs: the dev image, PgBouncer's
        try:
            compose("up", "-d", "--wait", "--wait-timeout", "300", "web")
        except AssertionError as exc:
            state = compose("ps", "-a", check=False) + compose(
                "logs", "--no-color", "--tail", "40", check=False
            )
            raise AssertionError(f"{exc}\n{state}") from None
        wait_http(f"http://localhost:{WEB_PORT}/healthz")
        uid = compose("exec", "-T", "web", "id", "-u").strip()
        assert uid != "0", "the dev web container runs as your user, not root"
        probe.write_text("PROBE = True\n")
        deadline = time.monotonic() + 60
        while "Reloading" not in compose("logs", "--no-color", "web"):
            assert time.monotonic() < deadline, "uvicorn --reload did not notice the change"
            time.sleep(1)
        assert probe.name in compose("logs", "--no-color", "web")
        wait_http(f"http://localhost:{WEB_PORT}/healthz")
    finally:
        probe.unlink(missing_ok=True)
        compose("down", "-v", "--remove-orphans", check=False, timeout=300)
