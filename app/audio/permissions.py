from rest_framework.throttling import UserRateThrottle


class UploadThrottle(UserRateThrottle):
    scope = "uploads"


class JobActionThrottle(UserRateThrottle):
    """Cancel and re-run, per user: each re-run queues a task."""

    scope = "job_actions"
