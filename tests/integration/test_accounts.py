"""Accounts on real PostgreSQL (mail in Django's test outbox; tasks run eagerly): email
verification gates uploads, sign-up is throttled per address and globally on both paths, and a
new password revokes API tokens."""

import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from accounts import services
from accounts.models import EmailAddress
from accounts.throttles import SignupGlobalThrottle, SignupThrottle
from audio.models import Job
from core.celery import app as celery_app
from testing import signals
from tests.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def eager_tasks(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    celery_app.conf.update(task_always_eager=True, task_eager_propagates=True)
    cache.clear()  # throttle counters
    yield
    celery_app.conf.update(task_always_eager=False, task_eager_propagates=False)


def signup(client: APIClient, name: str, **extra: str):
    return client.post(
        "/api/auth/signup/",
        {"username": name, "email": f"{name}@example.com", "password": "correct-horse-9"},
        **extra,
    )


def link_in(message) -> str:
    return re.search(r"https?://\S+/accounts/verify/\S+/", message.body)[0]


def upload(client: APIClient, tmp_path):
    data = io.BytesIO(signals.write(tmp_path / "a.wav", signals.tone(1)).read_bytes())
    data.name = "a.wav"
    return client.post("/api/jobs/", {"file": data, "preset": "podcast"}, format="multipart")


def test_an_unverified_account_cannot_upload_until_it_follows_the_link(
    tmp_path, mailoutbox, settings
) -> None:
    anonymous = APIClient()
    created = signup(anonymous, "vera")
    assert created.status_code == 201
    client = APIClient(HTTP_AUTHORIZATION=f"Token {created.json()['token']}")
    refused = upload(client, tmp_path)
    assert refused.status_code == 403
    assert "confirm your email address" in refused.json()["detail"]
    assert Job.objects.count() == 0 and not list(tmp_path.glob("jobs/*"))
    (message,) = mailoutbox
    assert message.to == ["vera@example.com"] and message.alternatives
    link = link_in(message)
    assert link.startswith(settings.SITE_URL)  # the stack's own address
    page = Client().get(link.removeprefix(settings.SITE_URL))
    assert page.status_code == 200 and "confirmed" in page.text
    assert upload(client, tmp_path).status_code == 202


def test_forged_expired_and_stale_links_verify_nothing(mailoutbox, settings) -> None:
    user = make_user("stale", verified=False)
    token = services.verification_token(user)
    assert services.verify(token + "x") is None  # forged
    user.email = "new@example.com"
    user.save()
    assert services.verify(token) is None  # made for the old address
    settings.EMAIL_VERIFY_MAX_AGE_S = -1
    assert services.verify(services.verification_token(user)) is None  # expired
    assert not services.is_verified(user)
    assert Client().get(f"/accounts/verify/{token}x/").status_code == 400


def test_a_new_link_on_request_then_throttled(mailoutbox, monkeypatch) -> None:
    from accounts.throttles import VerificationResendThrottle

    monkeypatch.setattr(
        VerificationResendThrottle, "THROTTLE_RATES", {"verification_resend": "2/hour"}
    )
    client = APIClient()
    client.force_authenticate(make_user("again", verified=False))
    codes = [client.post("/api/auth/verify/resend/").status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    assert len(mailoutbox) == 2


def test_signup_is_throttled_per_address_on_both_paths(monkeypatch) -> None:
    monkeypatch.setattr(SignupThrottle, "THROTTLE_RATES", {"signup": "3/hour"})
    monkeypatch.setattr(SignupGlobalThrottle, "THROTTLE_RATES", {"signup_global": "100/hour"})
    api, page = APIClient(), Client()
    codes = [signup(api, f"api{i}").status_code for i in range(2)]
    form = {
        "username": "html0",
        "email": "h@example.com",
        "password1": "correct-horse-9",
        "password2": "correct-horse-9",
    }
    codes.append(page.post("/accounts/signup/", form).status_code)
    # The counter is shared: the fourth sign-up from this address is refused on either path.
    codes.append(page.post("/accounts/signup/", {**form, "username": "html1"}).status_code)
    codes.append(signup(api, "api9").status_code)
    assert codes == [201, 201, 302, 429, 429]
    # Another address still may.
    assert signup(api, "elsewhere", REMOTE_ADDR="192.0.2.7").status_code == 201
    assert get_user_model().objects.count() == 4


def test_one_address_refused_does_not_use_up_the_global_allowance(monkeypatch) -> None:
    monkeypatch.setattr(SignupThrottle, "THROTTLE_RATES", {"signup": "2/hour"})
    monkeypatch.setattr(SignupGlobalThrottle, "THROTTLE_RATES", {"signup_global": "3/hour"})
    api = APIClient()
    codes = [signup(api, f"greedy{i}", REMOTE_ADDR="198.51.100.1").status_code for i in range(5)]
    assert codes == [201, 201, 429, 429, 429]
    assert signup(api, "someone", REMOTE_ADDR="198.51.100.2").status_code == 201
    assert signup(api, "too-many", REMOTE_ADDR="198.51.100.3").status_code == 429  # global


def test_signup_flood_from_many_addresses_meets_the_global_limit(monkeypatch) -> None:
    monkeypatch.setattr(SignupThrottle, "THROTTLE_RATES", {"signup": "100/hour"})
    monkeypatch.setattr(SignupGlobalThrottle, "THROTTLE_RATES", {"signup_global": "5/hour"})
    api = APIClient()
    codes = [signup(api, f"bot{i}", REMOTE_ADDR=f"198.51.100.{i}").status_code for i in range(7)]
    assert codes == [201] * 5 + [429] * 2


def test_a_new_password_revokes_api_tokens(mailoutbox) -> None:
    user = make_user("rotate")
    token = Token.objects.create(user=user)
    client = APIClient(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/jobs/").status_code == 200
    # Password reset by email (the link from the message), as a user who lost it would.
    page = Client()
    page.post("/accounts/password_reset/", {"email": user.email})
    link = next(line for line in mailoutbox[-1].body.splitlines() if "/accounts/reset/" in line)
    form = page.get(link[link.index("/accounts/reset/") :].strip(), follow=True)
    new = "brand-new-pass-77"
    page.post(form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    assert not Token.objects.filter(key=token.key).exists()
    assert client.get("/api/jobs/").status_code == 401
    # Saving the user without a new password keeps tokens.
    fresh = Token.objects.create(user=user)
    user.refresh_from_db()
    user.last_login = timezone.now()
    user.save()
    assert Token.objects.filter(key=fresh.key).exists()


def test_a_password_hash_upgrade_at_login_keeps_tokens(settings) -> None:
    """Django re-hashes a password with its current hasher when one logs in: not a new one."""
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.MD5PasswordHasher",
    ]
    user = make_user("legacy")
    user.password = make_password("pw-123456!", hasher="md5")
    user.save()
    token = Token.objects.create(user=user)
    assert Client().login(username=user.username, password="pw-123456!")
    user.refresh_from_db()
    assert user.password.startswith("pbkdf2_sha256$")  # upgraded...
    assert Token.objects.filter(key=token.key).exists()  # ...and the token kept


def test_accounts_made_before_verification_existed_are_verified_by_the_migration() -> None:
    call_command("migrate", "accounts", "zero", verbosity=0)
    try:
        old = get_user_model().objects.create_user("old-timer", "o@example.com", "pw-123456!")
    finally:
        call_command("migrate", "accounts", verbosity=0)
    assert services.is_verified(old)
    assert EmailAddress.objects.count() == 1
