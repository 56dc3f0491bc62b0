"""Errors reported: Sentry (Django and Celery) when SENTRY_DSN is set, tagged with the release and
environment and without personal data; otherwise, when ADMINS is set, Django's mail to admins for
unhandled errors of views and tasks (README, "Errors")."""

from typing import Any

REPORTED_LOGGERS = ("django.request", "celery.app.trace")  # a view's or a task's unhandled error


def init_sentry(dsn: str, environment: str, release: str, traces_sample_rate: float) -> bool:
    """Starts the SDK in this process (web, worker, beat: each imports the settings)."""
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.scrubber import DEFAULT_DENYLIST, EventScrubber

    # The SDK drops cookies, Authorization and the like; our own secret header too.
    denylist = [*DEFAULT_DENYLIST, "x-diagnostics-token", "x_diagnostics_token"]

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release or None,
        send_default_pii=False,  # no user emails, addresses, cookies or bodies
        event_scrubber=EventScrubber(denylist=denylist, recursive=True),
        traces_sample_rate=traces_sample_rate,
        integrations=[DjangoIntegration(), CeleryIntegration()],
    )
    return True


def mail_admins_on_errors(logging: dict[str, Any]) -> None:
    """The fallback without Sentry: unhandled errors of views and tasks mailed to ADMINS."""
    logging["handlers"]["mail_admins"] = {
        "class": "django.utils.log.AdminEmailHandler",
        "level": "ERROR",
        "filters": ["context"],
    }
    for name in REPORTED_LOGGERS:
        logging["loggers"][name] = {"handlers": ["console", "mail_admins"], "propagate": False}
