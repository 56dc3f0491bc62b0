from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from .models import EmailAddress


@admin.register(EmailAddress)
class EmailAddressAdmin(admin.ModelAdmin):
    list_display = ["user", "verified_at"]
    list_filter = [("verified_at", admin.EmptyFieldListFilter)]
    search_fields = ["user__username", "user__email"]
    list_select_related = ["user"]
    readonly_fields = ["user"]
    actions = ["mark_verified"]

    @admin.action(description="Mark the selected addresses verified")
    def mark_verified(self, request: HttpRequest, queryset: QuerySet[EmailAddress]) -> None:
        queryset.filter(verified_at__isnull=True).update(verified_at=timezone.now())
