"""The Docker Engine suites' shared parts (tests/containers, tests/swarm): the docker CLI, the
engine check, the production env file with real secrets, and a load of checked requests."""

import secrets
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.acme import NAME
from tests.load import ClientThreads
from tests.stack_env import ORIGINAL_ENVIRON, REPO_DIR

HTTP_PORT, HTTPS_PORT = 18080, 18443
WORK = REPO_DIR / "var" / "containers"


def compose_environ() -> dict[str, str]:
    """The environment pytest started with, without the test stack's (tests.stack_env lays it
    over os.environ for the native suites): compose takes a variable from the shell before the
    env file, so those would reach the containers."""
    return dict(ORIGINAL_ENVIRON)


def docker(*args: str, check: bool = True, timeout: float = 900, **kwargs: object) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def require_docker_engine() -> None:
    """The real Docker Engine (restart policies and healthchecks run by the engine), which
    `make test-containers` starts; anything else fails the suite loudly."""
    if shutil.which("docker") is None:
        pytest.fail("no docker CLI: run through `make test-containers`")
    fmt = "{{range .Server.Components}}{{.Name}} {{end}}"
    components = docker("version", "--format", fmt, check=False)
    if not components.startswith("Engine "):
        pytest.fail(
            f"no Docker Engine at DOCKER_HOST ({components.strip() or 'none'}): "
            "run through `make test-containers`"
        )


def write_env_file(name: str = "prod.env", **overrides: str) -> tuple[Path, dict[str, str]]:
    """The production example with real random secrets and local ports (and `overrides`)."""
    values = {
        "SECRET_KEY": secrets.token_urlsafe(64),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "PGBOUNCER_ADMIN_PASSWORD": secrets.token_urlsafe(24),
        "REDIS_BROKER_PASSWORD": secrets.token_urlsafe(24),
        "APP_DB_PASSWORD": secrets.token_urlsafe(24),
        "REDIS_CACHE_PASSWORD": secrets.token_urlsafe(24),
        "FLOWER_BASIC_AUTH": f"admin:{secrets.token_urlsafe(16)}",
        "DIAGNOSTICS_TOKEN": secrets.token_urlsafe(24),
        "ALLOWED_HOSTS": "localhost",
        "CSRF_TRUSTED_ORIGINS": f"https://localhost:{HTTPS_PORT}",
        "SERVER_NAME": NAME,  # the name the Let's Encrypt test (Pebble) certifies
        "NGINX_HTTP_PUBLISH": str(HTTP_PORT),
        "NGINX_HTTPS_PUBLISH": str(HTTPS_PORT),
        "WEB_CONCURRENCY": "2",
        "CELERY_WORKER_CONCURRENCY": "2",
        "EMAIL_URL": "console://",
        **overrides,
    }
    # In place: later lines of the example refer to earlier ones (${REDIS_BROKER_PASSWORD}).
    lines, unset = [], dict(values)
    for line in (REPO_DIR / ".env.prod.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        if "=" in line and not line.startswith("#") and key in unset:
            line = f"{key}={unset.pop(key)}"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in unset.items()]
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / name
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path, values


class Load(ClientThreads):
    """Requests through nginx over TLS from a few threads until stopped: a page view (302 to the
    login), the API without credentials (401) and /healthz (not /readyz, which answers 503 when
    a dependency is slower than its 2 s deadline, as on this loaded 2-core host now and then).
    Each answer is checked: any other status, or no answer, is a failure."""

    PATHS = (("/healthz", 200), ("/", 302), ("/api/jobs/", 401))

    def __init__(self, base_url: str, context: ssl.SSLContext, threads: int = 4) -> None:
        super().__init__(threads)
        self.base_url = base_url
        self.context = context
        self.count = 0
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, verify=self.context, timeout=30) as client:
            while not self._stop.is_set():
                for path, expected in self.PATHS:
                    started = time.monotonic()
                    try:
                        status = client.get(path).status_code
                        if status != expected:
                            self.failures.append(f"{path}: {status}")
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{path}: {exc!r}")
                    self.latencies.append(time.monotonic() - started)
                    self.count += 1

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {
            "requests": self.count,
            "failed": len(self.failures),
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
            "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1),
        }
