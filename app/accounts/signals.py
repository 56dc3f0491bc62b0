"""A new password (change, reset, admin) revokes the user's API tokens."""

from django.contrib.auth import get_user_model
from django.db.models.signals import pre_save
from django.dispatch import receiver

from . import services


@receiver(pre_save, sender=get_user_model())
def revoke_tokens_on_new_password(sender: type, instance: object, **kwargs: object) -> None:
    # set_password() leaves the raw password in _password until the save; Django's own hash
    # upgrade at login clears it first (an upgrade is not a new password).
    if instance.pk is not None and getattr(instance, "_password", None) is not None:
        services.revoke_tokens(instance)
