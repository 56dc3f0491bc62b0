"""nginx's protections at the production settings, on the real nginx run by its start script in
front of an upstream the test controls: the login limit on every credentials path at the rates
`.env.prod.example` ships, and the security headers on nginx's 429 and on upstream errors."""

import httpx
import pytest
from dotenv import dotenv_values

from tests.http_api import CREDENTIALS_PATHS
from tests.nginx_alone import nginx_running, upstream_running
from tests.stack_env import REPO_DIR

PRODUCTION = dotenv_values(REPO_DIR / ".env.prod.example")
HSTS = "max-age=63072000; includeSubDomains"


def test_production_login_rate_on_every_credentials_path(tmp_path) -> None:
    """Each path alone: the first request and the burst pass at once (nodelay), the next is
    nginx's 429 with the security headers. The rate (10 a minute) refills one slot every 6 s,
    far longer than these requests take; each path gets a client address of its own."""
    burst = int(PRODUCTION["NGINX_LOGIN_BURST"])
    rates = {key: PRODUCTION[key] for key in ("NGINX_LOGIN_RATE", "NGINX_LOGIN_BURST")}
    with (
        upstream_running() as upstream,
        nginx_running(
            tmp_path, upstream.address, NGINX_TRUSTED_PROXIES="127.0.0.0/8", **rates
        ) as base,
        httpx.Client(base_url=base, verify=False, timeout=10) as client,
    ):
        for index, path in enumerate(CREDENTIALS_PATHS):
            address = {"X-Forwarded-For": f"198.51.100.{index + 1}"}
            statuses = [client.get(path, headers=address).status_code for _ in range(burst + 3)]
            assert statuses == [200] * (burst + 1) + [429] * 2, (path, statuses)
            refused = client.get(path, headers=address)
            assert refused.headers.get("strict-transport-security") == HSTS, path
        # An ordinary page is not limited by it.
        ordinary = [
            client.get("/jobs/", headers={"X-Forwarded-For": "198.51.100.1"}).status_code
            for _ in range(burst + 3)
        ]
        assert ordinary == [200] * (burst + 3)


@pytest.mark.parametrize(("status", "expected"), [(500, 500), (503, 503), (None, 502)])
def test_security_headers_on_upstream_errors(tmp_path, status, expected) -> None:
    """An error from Django (500, 503), or no Django at all (nginx's 502): HSTS and the other
    headers are still sent (`add_header ... always`)."""
    with upstream_running(status or 200) as upstream:
        address = upstream.address
        if status is None:
            upstream.shutdown()
            upstream.server_close()
        with (
            nginx_running(tmp_path, address) as base,
            httpx.Client(base_url=base, verify=False, timeout=10) as client,
        ):
            response = client.get("/api/jobs/")
    assert response.status_code == expected
    assert response.headers.get("strict-transport-security") == HSTS
    assert response.headers["x-content-type-options"] == "nosniff"
    assert len(response.headers["x-request-id"]) == 32
