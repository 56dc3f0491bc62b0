"""A changed password (change, reset, admin) revokes the user's API tokens."""

from django.contrib.auth import get_user_model
from django.db.models.signals import pre_save
from django.dispatch import receiver

from . import services


@receiver(pre_save, sender=get_user_model())
def revoke_tokens_on_new_password(sender: type, instance: object, **kwargs: object) -> None:
    if instance.pk is None:
        return
    previous = sender.objects.filter(pk=instance.pk).values_list("password", flat=True).first()
    if previous is not None and previous != instance.password:
        services.revoke_tokens(instance)
