"""Limits on the credentials paths, per client address (the proxy's, see README) and globally."""

from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle


class LoginThrottle(AnonRateThrottle):
    scope = "login"


class SignupThrottle(SimpleRateThrottle):
    """Accounts created per client address, signed in or not (one session can sign up again)."""

    scope = "signup"

    def get_cache_key(self, request: object, view: object) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class SignupGlobalThrottle(SimpleRateThrottle):
    """Accounts created in all, whatever the address: a flood from many addresses stops here."""

    scope = "signup_global"

    def get_cache_key(self, request: object, view: object) -> str:
        return self.cache_format % {"scope": self.scope, "ident": "all"}


class VerificationResendThrottle(UserRateThrottle):
    scope = "verification_resend"


SIGNUP_THROTTLES = (SignupThrottle, SignupGlobalThrottle)


def signup_allowed(request: object) -> bool:
    """For the HTML sign-up page: the same limits as the API's sign-up, same counters."""
    return all(throttle().allow_request(request, None) for throttle in SIGNUP_THROTTLES)
