"""Native runner: the compose services as local processes, supervised by supervisord.

Every service runs the same start script (and config template) as its container, from
deployments/compose/<service>/, and is judged healthy by the same healthcheck script. The
services are supervisord.conf's programs (programs.py), the environment comes in layers
(envfiles.py), the machine is prepared by machine.py; this file starts, waits and stops.

    stack.py up | down | clean | ps | reload | logs [SERVICE] | run -- COMMAND... | env

State (database cluster, Redis data, certificates, logs, generated secrets) lives under STACK_DIR
(default: var/ in the checkout).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

from supervisor.xmlrpc import Faults, SupervisorTransport

from envfiles import REPO_DIR, StackError, config_hash, load_env
from machine import check_ports, prepare_dirs
from programs import CONF_FILE, DJANGO_ENTRYPOINT, Service, run_healthcheck, services_for


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


def _code_hash(env: dict[str, str]) -> str:
    """The application's files as the Django processes loaded them (names and contents: a
    checkout that leaves a file as it was is no change)."""
    digest = hashlib.sha256()
    for path in sorted(Path(env["APP_DIR"]).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(f"{path}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


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
            healthy, output = run_healthcheck(service, env)
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
    wanted = config_hash(env, CONF_FILE.read_text())
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
        healthy, output = run_healthcheck(service, env)
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
