"""Accounts: sign-up with email verification, and API tokens that a new password revokes."""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import User
from django.core import signing
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from .models import EmailAddress
from .tasks import send_verification_email as send_verification_email_task

logger = logging.getLogger(__name__)
VERIFY_SALT = "accounts.verify-email"


def register(username: str, email: str, password: str) -> User:
    """Create the account (unverified) and send the verification link by email."""
    user = get_user_model()(username=username, email=email)
    password_validation.validate_password(password, user)
    user.set_password(password)
    with transaction.atomic():
        user.save()
        EmailAddress.objects.create(user=user)
        request_verification(user)
    logger.info("user %s signed up; verification sent", user.pk)
    return user


def request_verification(user: User) -> None:
    transaction.on_commit(lambda: send_verification_email_task.delay(user.pk), robust=True)


def is_verified(user: User) -> bool:
    """The user's current address is the one they proved they read."""
    return EmailAddress.objects.filter(
        user=user, verified_at__isnull=False, email__iexact=user.email
    ).exists()


def verification_token(user: User) -> str:
    """Signed with SECRET_KEY; names the address, so changing the address voids the link."""
    return signing.dumps({"user": user.pk, "email": user.email}, salt=VERIFY_SALT)


def verify(token: str) -> User | None:
    """The user whose address the link proves, or None if it is forged, expired or stale."""
    try:
        data = signing.loads(token, salt=VERIFY_SALT, max_age=settings.EMAIL_VERIFY_MAX_AGE_S)
    except signing.BadSignature:
        return None
    user = get_user_model().objects.filter(pk=data.get("user"), email=data.get("email")).first()
    if user is None:
        return None
    address, _ = EmailAddress.objects.get_or_create(user=user)
    if not is_verified(user):
        EmailAddress.objects.filter(pk=address.pk).update(
            verified_at=timezone.now(), email=user.email
        )
        logger.info("user %s verified their email address", user.pk)
    return user


def send_verification_email(user_id: int) -> None:
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None or not user.email or is_verified(user):
        return
    link = settings.SITE_URL + reverse("verify-email", args=[verification_token(user)])
    context = {"user": user, "link": link, "days": settings.EMAIL_VERIFY_MAX_AGE_S // 86400}
    message = EmailMultiAlternatives(
        subject="Confirm your email address",
        body=render_to_string("registration/verify_email.txt", context),
        to=[user.email],
    )
    message.attach_alternative(
        render_to_string("registration/verify_email.html", context), "text/html"
    )
    message.send()


def revoke_tokens(user: User) -> int:
    """A new password ends every API token of the user (they sign in again for a new one)."""
    deleted, _ = Token.objects.filter(user=user).delete()
    if deleted:
        logger.info("user %s: password changed, %d API token(s) revoked", user.pk, deleted)
    return deleted
