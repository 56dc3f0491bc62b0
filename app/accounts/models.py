from django.conf import settings
from django.db import models


class EmailAddress(models.Model):
    """A user's email address and when they proved they read it (uploads need that)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="email_address"
    )
    verified_at = models.DateTimeField(null=True, blank=True)
    # The address the link went to: a user whose email changes since is unverified again.
    email = models.EmailField(blank=True)

    class Meta:
        verbose_name_plural = "email addresses"

    def __str__(self) -> str:
        return f"{self.user} ({'verified' if self.verified_at else 'unverified'})"
