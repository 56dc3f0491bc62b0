"""Abuse through the running stack (nginx/TLS -> web): forged client identity, floods on the
credentials paths, and accounts that never confirmed their address."""

import uuid

import httpx
import pytest

from tests.audio import signals
from tests.conftest import PASSWORD, NativeStack

pytestmark = pytest.mark.e2e

CREDENTIALS_PATHS = ["/admin/login/", "/accounts/login/", "/accounts/signup/",
                     "/accounts/password_reset/", "/api/auth/token/"]  # fmt: skip


def forged(i: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"203.0.113.{i}", "X-Real-IP": f"203.0.113.{i}"}


def test_a_forged_x_forwarded_for_does_not_reset_the_login_limit(
    native_stack: NativeStack, settings
) -> None:
    allowed = int(settings.LOGIN_RATE.split("/")[0])
    with native_stack.client(local_address=native_stack.new_address()) as client:
        responses = [
            client.post(
                "/api/auth/token/", json={"username": "nobody", "password": "x"}, headers=forged(i)
            )
            for i in range(allowed + 1)
        ]
    codes = [r.status_code for r in responses]
    assert codes == [400] * allowed + [429], codes
    assert "throttled" in responses[-1].json()["detail"]  # Django's limit (nginx's is HTML)


def test_a_forged_x_forwarded_for_does_not_reset_the_signup_limit(
    native_stack: NativeStack, settings
) -> None:
    allowed = int(settings.SIGNUP_RATE.split("/")[0])
    with native_stack.client(local_address=native_stack.new_address()) as client:
        codes = []
        for i in range(allowed + 1):
            name = f"flood-{uuid.uuid4().hex[:8]}"
            response = client.post("/api/auth/signup/", headers=forged(i), json={
                "username": name, "email": f"{name}@example.com", "password": PASSWORD,
            })  # fmt: skip
            codes.append(response.status_code)
    assert codes == [201] * allowed + [429], codes


@pytest.mark.parametrize("path", CREDENTIALS_PATHS)
def test_nginx_limits_every_credentials_path_per_address(native_stack: NativeStack, path) -> None:
    burst = int(native_stack.env["NGINX_LOGIN_BURST"])
    with native_stack.client(local_address=native_stack.new_address()) as client:
        responses = [client.get(path, headers=forged(i)) for i in range(burst + 5)]
    # nginx's own page (Django's throttles may answer 429 first on the API's paths).
    refused = [r for r in responses if r.status_code == 429 and "nginx" in r.text]
    assert refused, [r.status_code for r in responses]
    assert "strict-transport-security" in refused[0].headers  # security headers on errors too


def test_an_unverified_account_cannot_upload_until_the_emailed_link(
    native_stack: NativeStack, tmp_path
) -> None:
    account = native_stack.signup("unverified", verify=False)
    source = signals.write(tmp_path / "a.wav", signals.tone(1))

    def upload() -> httpx.Response:
        with native_stack.client() as client, source.open("rb") as f:
            return client.post("/api/jobs/", headers=account.auth, data={"preset": "podcast"},
                               files={"file": ("a.wav", f)})  # fmt: skip

    refused = upload()
    assert refused.status_code == 403 and "confirm your email" in refused.json()["detail"]
    link = native_stack.verification_link(f"{account.username}@example.com")
    assert link.startswith(native_stack.base_url)  # SITE_URL is this stack's own address
    with native_stack.client() as client:
        assert client.get(link).status_code == 200
    assert upload().status_code == 202
