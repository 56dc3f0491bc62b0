"""The native runner's own logic (deployments/native/stack.py), on the file system only."""

import os

import envfiles
import programs


def test_generated_secrets_are_private_from_the_first_byte(tmp_path, monkeypatch) -> None:
    """Created 0600, not widened by the umask and narrowed afterwards: with chmod disabled,
    only the mode the file was created with can make it private."""
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)
    monkeypatch.setattr(os, "fchmod", lambda *args, **kwargs: None)
    previous = os.umask(0)
    try:
        envfiles.ensure_secrets(tmp_path / "secrets.env")
    finally:
        os.umask(previous)
    path = tmp_path / "secrets.env"
    assert path.stat().st_mode & 0o777 == 0o600
    assert {line.split("=")[0] for line in path.read_text().splitlines()} == set(
        envfiles.GENERATED_SECRETS
    )


def test_the_configuration_hash_follows_the_stacks_variables_only(tmp_path) -> None:
    """`make up` restarts the stack when its configuration changed: a variable its env files
    name (set in the shell or a file), or the supervisord config; not a terminal's variables."""
    env = {
        "STACK_DIR": str(tmp_path),
        "STACK_MODE": "production",
        "MONITORING": "0",
        "NGINX_HTTPS_PORT": "8443",
        "TERM": "xterm",
        "SHLVL": "1",
    }
    same = envfiles.config_hash(env, "conf")
    assert (
        envfiles.config_hash({**env, "TERM": "dumb", "SHLVL": "4", "OLDPWD": "/"}, "conf") == same
    )
    for changed in ({"NGINX_HTTPS_PORT": "9443"}, {"STACK_MODE": "dev"}, {"MONITORING": "1"}):
        assert envfiles.config_hash({**env, **changed}, "conf") != same, changed
    assert envfiles.config_hash(env, "other conf") != same


def test_supervisord_conf_is_the_table_of_services() -> None:
    """supervisord.conf names every program the runner starts, with the stack's paths and users
    filled in from the environment; make dev swaps the Django start scripts, not the programs."""
    env = {**envfiles.load_env(), "STACK_MODE": "production", "MONITORING": "1"}
    names = [s.name for s in programs.services_for(env)]
    assert names[:4] == ["postgres", "pgbouncer", "redis_broker", "redis_cache"]
    assert "mail" not in names and "node_exporter" in names
    web = next(s for s in programs.services_for(env) if s.name == "web")
    assert web.command == (
        programs.DJANGO_ENTRYPOINT,
        f"{envfiles.REPO_DIR}/deployments/compose/django/start",
    )
    dev = {**env, "STACK_MODE": "dev", "MONITORING": "0", "DJANGO_START": "start-dev"}
    names = [s.name for s in programs.services_for(dev)]
    assert "mail" in names and "prometheus" not in names
    for service in programs.services_for(dev):
        scripts = [w for w in (*service.command, *service.healthcheck) if w.startswith("/")]
        if service.name in ("web", "events", "celery_worker"):
            assert service.command[-1].endswith("/start-dev"), service.name
        for script in scripts:
            assert os.access(script, os.X_OK), (service.name, script)
