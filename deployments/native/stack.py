"""Native runner: the compose services as local processes, supervised by supervisord.

Every service runs the same start script (and config template) as its container, from
deployments/compose/<service>/, and is judged healthy by the same healthcheck script.

    stack.py up | down | ps | logs [SERVICE] | run -- COMMAND... | env

State (database cluster, Redis data, certificates, logs, generated secrets) lives under STACK_DIR
(default: var/ in the checkout).
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from supervisor.xmlrpc import Faults, SupervisorTransport

REPO_DIR = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CONF_FILE = HERE / "supervisord.conf"  # the services: commands, users, stops, healthchecks
DEFAULTS_FILE = HERE / "defaults.env"
DEV_FILE = HERE / "dev.env"  # `make dev` (STACK_MODE=dev): development settings over the defaults
DJANGO_ENTRYPOINT = str(REPO_DIR / "deployments" / "compose" / "django" / "entrypoint")
GENERATED_SECRETS = (
    "SECRET_KEY",
    "POSTGRES_PASSWORD",
    "PGBOUNCER_ADMIN_PASSWORD",
    "FLOWER_PASSWORD",
    "DIAGNOSTICS_TOKEN",
    "REDIS_BROKER_PASSWORD",
    "REDIS_CACHE_PASSWORD",
    "APP_DB_PASSWORD",
)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class StackError(Exception):
    """A failure the user can act on; printed without a traceback."""


@dataclass(frozen=True)
class Service:
    """A program of supervisord.conf, with what stack.py reads of it."""

    name: str
    command: tuple[str, ...]
    healthcheck: tuple[str, ...]
    ports: tuple[str, ...] = ()  # the variables naming the ports it listens on
    start_timeout: int = 60
    stop_signal: str = "TERM"
    stop_wait: int = 10


def all_services(env: dict[str, str]) -> list[Service]:
    """Every program of supervisord.conf, in start order, its values expanded with env."""
    parser = configparser.RawConfigParser()
    parser.read_string(CONF_FILE.read_text())
    programs = []
    for section in parser.sections():
        if not section.startswith("program:"):
            continue
        name = section.split(":", 1)[1]

        def value(key: str, default: str = "", name: str = name, section: str = section) -> str:
            raw = parser.get(section, key, fallback=default)
            expansions = {**{f"ENV_{k}": v for k, v in env.items()}, "program_name": name}
            try:
                return re.sub(r"%\((\w+)\)s", lambda m: expansions[m.group(1)], raw)
            except KeyError as missing:
                raise StackError(f"{CONF_FILE.name} [{section}] needs {missing}") from None

        service = Service(
            name,
            tuple(shlex.split(value("command"))),
            tuple(shlex.split(value("health_check"))),
            ports=tuple(value("ports").split()),
            start_timeout=int(value("health_timeout", "60")),
            stop_signal=value("stopsignal", "TERM"),
            stop_wait=int(value("stopwaitsecs", "10")),
        )
        programs.append((int(value("priority", "999")), service))
    return [service for _, service in sorted(programs, key=lambda item: item[0])]


# --- environment ---------------------------------------------------------------------------


def stack_dir() -> Path:
    return Path(os.environ.get("STACK_DIR", REPO_DIR / "var")).resolve()


def _ensure_secrets(path: Path) -> None:
    """Generate the local stack's secrets once; they stay in STACK_DIR (never committed)."""
    existing = dotenv_values(path) if path.exists() else {}
    missing = [name for name in GENERATED_SECRETS if not existing.get(name)]
    if not missing:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0600 from the first byte (not chmodded afterwards): no moment when others may read it.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)  # a file left by an older version may be wider
        for name in missing:
            out.write(f"{name}={secrets.token_urlsafe(48 if name == 'SECRET_KEY' else 24)}\n")


def load_env() -> dict[str, str]:
    """The stack's environment: shell > .env.native > STACK_DIR/secrets.env > defaults.env.

    Earlier sources win; later files may refer to earlier values as ${NAME}.
    """
    if os.environ.get("STACK_ENV_LOADED") == str(stack_dir()):
        return dict(os.environ)  # already resolved by an outer `stack.py run`
    state = stack_dir()
    env = dict(os.environ)
    env.setdefault("REPO_DIR", str(REPO_DIR))
    env["STACK_DIR"] = str(state)
    secrets_file = state / "secrets.env"
    _ensure_secrets(secrets_file)
    user_file = REPO_DIR / ".env.native"
    user_set = set(env)
    # The mode `up` was last run in (make up: production, make dev: dev), unless given.
    mode_file = state / "run" / "mode"
    env.setdefault(
        "STACK_MODE", mode_file.read_text().strip() if mode_file.exists() else "production"
    )
    # Likewise whether it runs the monitoring services (make up MONITORING=1).
    monitoring_file = state / "run" / "monitoring"
    env.setdefault(
        "MONITORING", monitoring_file.read_text().strip() if monitoring_file.exists() else "0"
    )
    dev = [DEV_FILE] if env.get("STACK_MODE") == "dev" else []
    for path in (user_file, secrets_file, *dev, DEFAULTS_FILE):
        if not path.exists():
            continue
        values = dotenv_values(path, interpolate=False)
        for key, raw in values.items():
            if raw is not None:
                env.setdefault(key, _expand(raw, env))
        if path == user_file:
            user_set |= set(values)
    env["PATH"] = os.pathsep.join(
        [str(REPO_DIR / ".venv" / "bin"), _postgres_bindir(), env["PATH"]]
    )
    env["STACK_EXTERNAL_DATABASE"] = "1" if "DATABASE_URL" in user_set else ""
    # The accounts supervisord runs the programs as (supervisord.conf's `user`): only root can
    # switch, so anyone else runs every program as themselves.
    if os.geteuid() == 0:
        env.setdefault("STACK_USER", "core")
        env["STACK_POSTGRES_USER"] = "postgres"  # initdb, postgres and pgbouncer refuse root
    else:
        env["STACK_USER"] = env["STACK_POSTGRES_USER"] = pwd.getpwuid(os.geteuid()).pw_name
    env["STACK_ENV_LOADED"] = str(state)
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    """Replace ${NAME} with its value in env (the earlier, higher-priority sources)."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise StackError(f"{value!r} refers to ${{{name}}}, which is not set")
        return env[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lookup, value)


def _postgres_bindir() -> str:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    return str(candidates[0]) if candidates else ""


def services_for(env: dict[str, str]) -> list[Service]:
    """The programs this run starts: no local database when the settings point at an external
    one, the mail sink in development only, Prometheus and the exporters with MONITORING=1."""
    skip = set()
    if env.get("STACK_EXTERNAL_DATABASE"):
        skip |= {"postgres", "pgbouncer"}
    elif env.get("POSTGRES_HOST", "127.0.0.1") not in LOOPBACK:
        skip.add("postgres")
    if env.get("STACK_MODE") != "dev":
        skip.add("mail")
    monitoring = env.get("MONITORING") == "1"
    services = [
        s
        for s in all_services(env)
        if s.name.removesuffix("_exporter") not in skip
        and (monitoring or not (s.name == "prometheus" or s.name.endswith("_exporter")))
    ]
    if only := {name for name in env.get("STACK_SERVICES", "").split(",") if name}:
        services = [s for s in services if s.name in only]  # a subset (make test-fast)
    return services


# --- supervisord ---------------------------------------------------------------------------


def _paths(env: dict[str, str]) -> dict[str, Path]:
    state = Path(env["STACK_DIR"])
    return {
        "state": state,
        "log": state / "log",
        "run": state / "run",
        "pid": state / "run" / "supervisord.pid",
        "sock": state / "run" / "supervisor.sock",
        "envhash": state / "run" / "env.sha256",
        "codehash": state / "run" / "code.sha256",
    }


def _is_root() -> bool:
    return os.geteuid() == 0


def _ensure_stack_user(name: str) -> pwd.struct_passwd:
    """The unprivileged account web, the Celery processes, Redis and nginx run as (root only)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def _chown_tree(directory: Path, account: pwd.struct_passwd) -> None:
    for item in [directory, *directory.rglob("*")]:
        if item.stat().st_uid != account.pw_uid:
            os.chown(item, account.pw_uid, account.pw_gid, follow_symlinks=False)


def _supervisorctl(env: dict[str, str], *args: str, check: bool = True) -> str:
    result = subprocess.run(
        [str(REPO_DIR / ".venv" / "bin" / "supervisorctl"), "-c", str(CONF_FILE), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    # supervisorctl exits non-zero when any program is not RUNNING; callers decide.
    if check and result.returncode not in (0, 3):
        raise StackError(f"supervisorctl {' '.join(args)} failed: {result.stdout}{result.stderr}")
    return result.stdout


def supervisord_pid(env: dict[str, str]) -> int | None:
    pidfile = _paths(env)["pid"]
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def program_states(env: dict[str, str]) -> dict[str, str]:
    states = {}
    for line in _supervisorctl(env, "status", check=False).splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states[parts[0]] = parts[1]
    return states


# --- preparing the machine -----------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports(env: dict[str, str], services: list[Service]) -> None:
    ports = [(s, variable, env.get(variable, "")) for s in services for variable in s.ports]
    for service, variable, value in ports:
        if not value.isdigit():
            raise StackError(f"{variable}={value!r} is not a port number ({service.name})")
    for service, variable, value in ports:
        # A stack stopped a moment ago may still be releasing its sockets: allow a few seconds.
        deadline = time.monotonic() + 5
        while not _port_free(int(value)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _port_free(int(value)):
            raise StackError(
                f"port {value} ({variable}, for {service.name}) is already in use by another "
                f"process; free it or set {variable} to another port (shell or .env)"
            )


def _make_traversable(path: Path) -> None:
    """Let the unprivileged users (postgres, nginx workers) reach the checkout's files."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod(mode | 0o001)


def prepare_dirs(env: dict[str, str], services: list[Service]) -> None:
    p = _paths(env)
    state = p["state"]
    for directory in (p["log"], p["run"]):
        directory.mkdir(parents=True, exist_ok=True)
    # What the stack's user writes: heartbeats, Redis data, files, nginx's config, TLS, ACME.
    stack_dirs = [
        Path(env[name])
        for name in (
            "HEARTBEAT_DIR",
            "REDIS_DATA_DIR",
            "STATIC_ROOT",
            "MEDIA_ROOT",
            "NGINX_CONF_DIR",
            "NGINX_RUN_DIR",
            "ACME_ROOT",
            "BACKUP_DIR",
            "METRICS_DIR",
            "PROMETHEUS_CONF_DIR",
            "PROMETHEUS_DATA_DIR",
        )
    ]
    stack_dirs += [Path(env["TLS_CERT"]).parent, Path(env["TLS_KEY"]).parent]
    if env.get("MAIL_DIR"):  # make dev's mail sink
        stack_dirs.append(Path(env["MAIL_DIR"]))
    for directory in stack_dirs:
        directory.mkdir(parents=True, exist_ok=True)
    postgres_dirs = [Path(env["PGBOUNCER_CONF_DIR"])]
    if any(s.name == "postgres" for s in services):
        postgres_dirs += [Path(env["PGDATA"]).parent, Path(env["POSTGRES_SOCKET_DIR"])]
    for directory in postgres_dirs:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if _is_root():
        _make_traversable(state)
        _make_traversable(REPO_DIR / "deployments")
        _make_traversable(REPO_DIR / ".venv")
        # The virtualenv's interpreter may live in root's home (pyenv): let the user reach it.
        _make_traversable(Path(os.path.realpath(REPO_DIR / ".venv" / "bin" / "python")).parent)
        for directory in postgres_dirs:
            _chown_tree(directory, pwd.getpwnam("postgres"))
        user = _ensure_stack_user(env["STACK_USER"])
        for directory in set(stack_dirs):
            if directory.is_relative_to(state):  # never someone else's files (e.g. /etc)
                _chown_tree(directory, user)


# --- commands ------------------------------------------------------------------------------


def _env_hash(env: dict[str, str], conf: str) -> str:
    """The stack's configuration: every variable its env files name, as resolved (a shell value
    included), and the supervisord config. Other shell variables (a terminal's, make's) are not
    configuration: `make up` from another shell does not restart the stack."""
    state = Path(env["STACK_DIR"])
    files = (DEFAULTS_FILE, DEV_FILE, state / "secrets.env", REPO_DIR / ".env.native")
    names = {"STACK_MODE", "MONITORING"}
    for path in files:
        if path.exists():
            names |= set(dotenv_values(path, interpolate=False))
    payload = "\n".join(f"{k}={env.get(k)}" for k in sorted(names)) + conf
    return hashlib.sha256(payload.encode()).hexdigest()


def _code_hash(env: dict[str, str]) -> str:
    """The application's files as the Django processes loaded them (names and contents: a
    checkout that leaves a file as it was is no change)."""
    digest = hashlib.sha256()
    for path in sorted(Path(env["APP_DIR"]).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(f"{path}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _run_healthcheck(service: Service, env: dict[str, str]) -> tuple[bool, str]:
    try:
        result = subprocess.run(
            list(service.healthcheck),
            env=env,
            cwd=env["APP_DIR"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "healthcheck timed out after 10s"
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def log_tail(env: dict[str, str], name: str, lines: int = 40) -> str:
    path = _paths(env)["log"] / f"{name}.log"
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_healthy(env: dict[str, str], services: list[Service], since: float) -> None:
    """Each service in turn; prints when each was found healthy, counted from `since`."""
    for service in services:
        started = time.monotonic()
        deadline = started + service.start_timeout
        while True:
            healthy, output = _run_healthcheck(service, env)
            if healthy:
                print(f"  {service.name:<14} healthy at {time.monotonic() - since:.1f}s")
                break
            state = program_states(env).get(service.name, "UNKNOWN")
            if state == "FATAL" or time.monotonic() > deadline:
                raise StackError(
                    f"{service.name} is not healthy (supervisor state {state}, waited "
                    f"{time.monotonic() - started:.0f}s). Last check: {output or '(no output)'}\n"
                    f"--- last lines of {_paths(env)['log'] / (service.name + '.log')} ---\n"
                    f"{log_tail(env, service.name)}"
                )
            time.sleep(0.5)


def _start(env: dict[str, str], services: list[Service]) -> None:
    """Start the programs (autostart is off in supervisord.conf), without waiting on each:
    wait_healthy judges them."""
    sock = f"unix://{_paths(env)['sock']}"
    rpc = xmlrpc.client.ServerProxy("http://localhost", SupervisorTransport(None, None, sock))
    deadline = time.monotonic() + 30
    while True:  # supervisord daemonizes before its socket listens
        try:
            rpc.supervisor.getState()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise StackError(f"supervisord does not answer on {sock}") from None
            time.sleep(0.1)
    for service in services:
        try:
            rpc.supervisor.startProcess(service.name, False)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != Faults.ALREADY_STARTED:
                raise StackError(f"supervisord cannot start {service.name}: {fault}") from None


def up(env: dict[str, str]) -> None:
    services = services_for(env)
    p = _paths(env)
    wanted = _env_hash(env, CONF_FILE.read_text())
    running = supervisord_pid(env)
    if running and p["envhash"].exists() and p["envhash"].read_text() != wanted:
        print("Configuration changed: restarting the stack")
        down(env)
        running = None
    prepare_dirs(env, services)
    (p["run"] / "mode").write_text(env["STACK_MODE"])
    (p["run"] / "monitoring").write_text(env["MONITORING"])
    started = time.monotonic()
    code = _code_hash(env)
    if running:
        stale = p["codehash"].exists() and p["codehash"].read_text() != code
        if stale and env["STACK_MODE"] != "dev":  # make dev reloads by itself
            print("Application code changed: restarting the Django services")
            django = [s.name for s in services if s.command[0] == DJANGO_ENTRYPOINT]
            _supervisorctl(env, "restart", *django)
    else:
        check_ports(env, services)
        p["envhash"].write_text(wanted)
        supervisord = str(REPO_DIR / ".venv" / "bin" / "supervisord")
        subprocess.run([supervisord, "-c", str(CONF_FILE)], env=env, check=True)
    _start(env, services)
    print(f"Waiting for {len(services)} services (logs in {p['log']})")
    p["codehash"].write_text(code)
    wait_healthy(env, services, started)
    https = env["NGINX_HTTPS_PORT"]
    print(
        f"Stack is up in {time.monotonic() - started:.1f}s: https://localhost:{https}/ "
        f"(CA: {Path(env['TLS_CERT']).parent / 'ca.pem'})"
    )


def down(env: dict[str, str]) -> None:
    pid = supervisord_pid(env)
    if pid is None:
        print("Stack is not running")
        return
    _supervisorctl(env, "shutdown", check=False)
    deadline = time.monotonic() + 120
    while supervisord_pid(env) is not None:
        if time.monotonic() > deadline:
            raise StackError(f"supervisord (pid {pid}) did not stop within 120s")
        time.sleep(0.3)
    print("Stack is down")


def ps(env: dict[str, str]) -> int:
    if supervisord_pid(env) is None:
        print("Stack is not running")
        return 1
    states = program_states(env)
    worst = 0
    print(f"{'SERVICE':<14} {'STATE':<10} HEALTH")
    for service in services_for(env):
        healthy, output = _run_healthcheck(service, env)
        worst = worst or (0 if healthy else 1)
        last = output.splitlines()[-1] if output else ""
        print(
            f"{service.name:<14} {states.get(service.name, '?'):<10} "
            f"{'healthy' if healthy else 'UNHEALTHY'}  {last[:80]}"
        )
    return worst


def clean(env: dict[str, str]) -> None:
    """Stop the stack and delete its state directory (database, media, logs, certificates)."""
    down(env)
    state = _paths(env)["state"]
    if state.exists():
        shutil.rmtree(state)
        print(f"Deleted {state}")


def logs(env: dict[str, str], names: list[str]) -> None:
    log_dir = _paths(env)["log"]
    files = (
        [str(log_dir / f"{n}.log") for n in names]
        if names
        else sorted(str(f) for f in log_dir.glob("*.log"))
    )
    os.execvp("tail", ["tail", "-n", "50", "-F", *files])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start every service and wait until all are healthy")
    sub.add_parser("down", help="stop every service")
    sub.add_parser("clean", help="stop every service and delete the stack's state directory")
    sub.add_parser("ps", help="state and health of every service")
    reload_parser = sub.add_parser(
        "reload", help="reload services without dropping requests: web and events (Gunicorn), nginx"
    )
    reload_parser.add_argument("services", nargs="*", choices=["web", "events", "nginx"])
    logs_parser = sub.add_parser("logs", help="follow the logs")
    logs_parser.add_argument("services", nargs="*")
    run_parser = sub.add_parser("run", help="run a command with the stack's environment")
    run_parser.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("env", help="print the stack's environment (shell syntax)")
    args = parser.parse_args(argv)

    try:
        env = load_env()
        if args.command == "up":
            up(env)
        elif args.command == "down":
            down(env)
        elif args.command == "clean":
            clean(env)
        elif args.command == "ps":
            return ps(env)
        elif args.command == "reload":  # each reloads gracefully on SIGHUP
            names = args.services or ["web", "events"]
            print(_supervisorctl(env, "signal", "HUP", *names).strip())
        elif args.command == "logs":
            logs(env, args.services)
        elif args.command == "run":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                raise StackError("run needs a command")
            os.execvpe(cmd[0], cmd, env)
        elif args.command == "env":
            for key in sorted(set(env) - set(os.environ) | {"PATH"}):
                print(f"export {key}={shlex.quote(env[key])}")
    except StackError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
