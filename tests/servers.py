"""Web's server started apart from any stack, as its start script runs it."""

import subprocess
import sys

from tests.stack_env import REPO_DIR

GUNICORN_CONF = REPO_DIR / "deployments" / "compose" / "django" / "gunicorn.conf.py"


def start_server(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Gunicorn as web's start runs it, with the given settings."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(GUNICORN_CONF),
        "--chdir",
        env["APP_DIR"],
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
