"""A new password (change, reset, admin) revokes the user's API tokens; a deleted token or a
saved user leaves the token cache at once (accounts.authentication)."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token

from . import authentication, services


@receiver(pre_save, sender=get_user_model())
def revoke_tokens_on_new_password(sender: type, instance: User, **kwargs: object) -> None:
    # set_password() leaves the raw password in _password until the save; Django's own hash
    # upgrade at login clears it first (an upgrade is not a new password).
    if instance.pk is not None and getattr(instance, "_password", None) is not None:
        services.revoke_tokens(instance)


@receiver(post_delete, sender=Token)
def forget_deleted_token(sender: type, instance: Token, **kwargs: object) -> None:
    authentication.forget([instance.key])


@receiver(post_save, sender=get_user_model())
def forget_tokens_of_saved_user(sender: type, instance: User, **kwargs: object) -> None:
    if not kwargs.get("created") and kwargs.get("update_fields") != frozenset({"last_login"}):
        keys = Token.objects.filter(user=instance).values_list("key", flat=True)
        authentication.forget(list(keys))
