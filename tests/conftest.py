import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import httpx
import pytest
from aiosmtpd.controller import Controller

import stack
from tests.stack_env import REPO_DIR, STACK_ENV

STACK_SCRIPT = REPO_DIR / "deployments" / "native" / "stack.py"
ARTIFACTS = REPO_DIR / "test-artifacts"


PASSWORD = "correct-horse-42"


@dataclass(frozen=True)
class Account:
    username: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}


@dataclass
class NativeStack:
    env: dict[str, str]
    mail: "SmtpSink | None" = None  # where the stack's mail goes (EMAIL_URL)
    # Where each service's log stood when this test session began: `log()` reads from there, so
    # a stack kept from an earlier run (KEEP_TEST_STACK) never shows that run's lines.
    log_start: dict[str, int] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.env['NGINX_HTTPS_PORT']}"

    @property
    def media_root(self) -> Path:
        return Path(self.env["MEDIA_ROOT"])

    @property
    def ca_file(self) -> str:
        return str(Path(self.env["TLS_CERT"]).parent / "ca.pem")

    @property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def client(self, local_address: str | None = None, **kwargs: object) -> httpx.Client:
        """An HTTPS client; `local_address` (127.0.0.x) to come from another client address."""
        transport = httpx.HTTPTransport(verify=self.tls, local_address=local_address)
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.base_url, verify=self.tls, transport=transport, **kwargs)

    def new_address(self) -> str:
        """Each sign-up and login comes from its own loopback address, as users' requests do,
        so that nginx's per-address credentials limit is not what a suite of many users hits."""
        self._addresses = getattr(self, "_addresses", 0) + 1
        return f"127.0.{1 + self._addresses // 250}.{1 + self._addresses % 250}"

    def signup(self, name: str = "user", verify: bool = True) -> Account:
        """A new account; `verify` follows the link of the verification email (real mail path:
        the worker sends it to the stack's SMTP sink)."""
        username = f"{name}-{uuid.uuid4().hex[:8]}"
        with self.client(local_address=self.new_address()) as client:
            response = client.post(
                "/api/auth/signup/",
                json={
                    "username": username,
                    "email": f"{username}@example.com",
                    "password": PASSWORD,
                },
            )
            assert response.status_code == 201, response.text
            if verify:
                link = self.verification_link(f"{username}@example.com")
                assert client.get(link).status_code == 200
        return Account(username, response.json()["token"])

    def verification_link(self, address: str) -> str:
        assert self.mail is not None, "this stack's mail is not collected"
        message = self.mail.wait_for(lambda m: address in m["to"] and "Confirm" in m["subject"])
        body = message.get_body(("plain",)).get_content()
        return next(word for word in body.split() if "/accounts/verify/" in word)

    def session(self, account: Account, local_address: str | None = None) -> httpx.Client:
        """A client signed in through the login page (a session cookie, as a browser has)."""
        client = self.client(local_address=local_address or self.new_address())
        client.get("/accounts/login/")
        response = client.post(
            "/accounts/login/",
            data={
                "username": account.username,
                "password": PASSWORD,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
            headers={"Referer": f"{self.base_url}/accounts/login/"},
        )
        assert response.status_code == 302, response.text
        return client

    def supervisorctl(self, *args: str) -> str:
        return stack._supervisorctl(self.env, *args, check=False)

    def pid(self, service: str) -> int:
        return int(self.supervisorctl("pid", service).strip())

    def _log_path(self, service: str) -> Path:
        return Path(self.env["STACK_DIR"]) / "log" / f"{service}.log"

    def mark_logs(self) -> None:
        for path in self._log_path("x").parent.glob("*.log"):
            self.log_start[path.stem] = path.stat().st_size

    def log(self, service: str) -> str:
        """What the service logged during this test session."""
        path = self._log_path(service)
        start = self.log_start.get(service, 0)
        with path.open("rb") as f:
            f.seek(start if path.stat().st_size >= start else 0)  # 0: supervisord rotated it
            return f.read().decode(errors="replace")

    def diagnostics_headers(self) -> dict[str, str]:
        return {"X-Diagnostics-Token": self.env["DIAGNOSTICS_TOKEN"]}


def _run_stack(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STACK_SCRIPT), command],
        env={**STACK_ENV, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


# The tiers are the folders: what a test may start follows from where it lives.
TESTS_DIR = Path(__file__).resolve().parent
TIERS = {
    "unit": "no server: pure logic, files and configuration",
    "integration": "PostgreSQL, PgBouncer and Redis of the test stack, or a server it starts alone",
    "e2e": "the whole native stack over HTTPS",
    "containers": "the compose stacks on a Docker Engine of its own",
    "chaos": "a native stack of its own, killed, restarted and overloaded",
    "swarm": "the stack on a single-node Docker Swarm",
}
WHOLE_STACK_TIERS = {"e2e", "chaos"}
DB_SERVERS = "postgres,pgbouncer,redis_broker,redis_cache"


def pytest_configure(config: pytest.Config) -> None:
    for tier, what in TIERS.items():
        config.addinivalue_line("markers", f"{tier}: {what} (tests/{tier}/)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder's tier, and refuse a test that needs more than its tier
    gives: the database in unit, the whole stack outside e2e and chaos."""
    for item in items:
        tier = item.path.relative_to(TESTS_DIR).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in a tier folder: {list(TIERS)}")
        item.add_marker(tier)
        fixtures = set(getattr(item, "fixturenames", ()))
        if tier == "unit" and (item.get_closest_marker("django_db") or "test_servers" in fixtures):
            raise pytest.UsageError(f"{item.nodeid}: a unit test uses the database")
        if "native_stack" in fixtures and tier not in WHOLE_STACK_TIERS:
            raise pytest.UsageError(f"{item.nodeid}: needs the whole stack, so it is e2e")


@pytest.fixture(scope="session")
def native_stack(smtp_sink: "SmtpSink") -> Iterator[NativeStack]:
    """The whole stack, started natively with `stack.py up` (what `make up` runs), its mail
    going to the test's SMTP sink."""
    try:
        result = _run_stack("up")
        if result.returncode != 0:
            pytest.fail(f"stack.py up failed:\n{result.stdout}\n{result.stderr}")
        print(result.stdout)
        stack = NativeStack(STACK_ENV, smtp_sink)
        stack.mark_logs()
        yield stack
    finally:
        if not os.environ.get("KEEP_TEST_STACK"):
            down = _run_stack("down")
            assert down.returncode == 0, down.stderr


@pytest.fixture(scope="session")
def db_servers() -> Iterator[None]:
    """The test stack's PostgreSQL, PgBouncer and Redis only, by the same runner and in the same
    state directory: what the database tests use (tasks run eagerly, mail stays in memory)."""
    try:
        result = _run_stack("up", STACK_SERVICES=DB_SERVERS)
        if result.returncode != 0:
            pytest.fail(f"stack.py up failed:\n{result.stdout}\n{result.stderr}")
        # The app's database role, provisioned by web's release step (web does not run here).
        migrate = subprocess.run(
            [str(REPO_DIR / "deployments" / "compose" / "django" / "release"), "migrate_safely"],
            env=STACK_ENV,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if migrate.returncode != 0:
            pytest.fail(f"migrate_safely failed:\n{migrate.stdout}\n{migrate.stderr}")
        yield
    finally:
        if not os.environ.get("KEEP_TEST_STACK"):
            _run_stack("down", STACK_SERVICES=DB_SERVERS)


@pytest.fixture(scope="session")
def test_servers(request: pytest.FixtureRequest) -> object:
    """The servers the integration tier needs: the whole stack when this run starts it anyway
    (an e2e test was collected), else PostgreSQL, PgBouncer and Redis alone."""
    whole = any(item.get_closest_marker("e2e") for item in request.session.items)
    return request.getfixturevalue("native_stack" if whole else "db_servers")


@pytest.fixture(scope="session")
def django_db_setup(test_servers: object, django_db_setup: None) -> None:
    """The Django test database lives on the test stack's PostgreSQL."""


class SmtpSink:
    """A real SMTP server (aiosmtpd) that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        message = BytesParser(policy=policy.default).parsebytes(envelope.content)
        self.messages.append(message)
        return "250 OK"

    def wait_for(self, predicate, timeout: float = 60) -> EmailMessage:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if predicate(message):
                    return message
            time.sleep(0.2)
        raise AssertionError(f"no such email; got {[m['subject'] for m in self.messages]}")


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    host, port = STACK_ENV["EMAIL_URL"].removeprefix("smtp://").split(":")
    sink = SmtpSink()
    controller = Controller(sink, hostname=host, port=int(port))
    controller.start()
    yield sink
    controller.stop()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
