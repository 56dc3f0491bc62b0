"""Limits on the credentials paths, per client address (the proxy's, see README) and globally."""

from django.http import HttpRequest
from rest_framework.request import Request
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle
from rest_framework.views import APIView


class LoginThrottle(AnonRateThrottle):
    scope = "login"


class SignupThrottle(SimpleRateThrottle):
    """Accounts created per client address, signed in or not (one session can sign up again)."""

    scope = "signup"

    def get_cache_key(self, request: Request, view: APIView) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class SignupGlobalThrottle(SimpleRateThrottle):
    """Accounts created in all, whatever the address: a flood from many addresses stops here."""

    scope = "signup_global"

    def get_cache_key(self, request: Request, view: APIView) -> str:
        return self.cache_format % {"scope": self.scope, "ident": "all"}


class VerificationResendThrottle(UserRateThrottle):
    scope = "verification_resend"


SIGNUP_THROTTLES = (SignupThrottle, SignupGlobalThrottle)


def signup_allowed(request: HttpRequest) -> bool:
    """For the HTML sign-up page: the same limits as the API's sign-up, same counters."""
    return all(
        throttle().allow_request(request, None)  # type: ignore[arg-type]  # they read only META
        for throttle in SIGNUP_THROTTLES
    )
