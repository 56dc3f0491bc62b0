from collections.abc import Callable
from typing import cast

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import Job, Rendition
from .services import jobs as job_services


def _applied(operation: Callable[[Job], None], job: Job) -> bool:
    try:
        operation(job)
    except job_services.Refused:
        return False
    return True


class RenditionInline(admin.TabularInline):
    model = Rendition
    extra = 0
    can_delete = False
    fields = ["format", "size", "loudness", "gain_db", "within_target", "note"]
    readonly_fields = cast(list[str], fields)  # names only, no groups


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "original_name",
        "owner",
        "preset",
        "status",
        "phase",
        "progress",
        "attempts",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "preset", "created_at"]
    search_fields = ["id", "original_name", "owner__username", "owner__email", "error"]
    date_hierarchy = "created_at"
    list_select_related = ["owner"]
    readonly_fields = [field.name for field in Job._meta.fields]
    inlines = [RenditionInline]
    actions = ["rerun", "cancel"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Re-run the selected finished jobs")
    def rerun(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(_applied(job_services.rerun_job, job) for job in queryset)
        self.message_user(
            request,
            f"{done} of {queryset.count()} jobs queued again.",
            messages.SUCCESS if done else messages.WARNING,
        )

    @admin.action(description="Cancel the selected queued or running jobs")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        done = sum(_applied(job_services.cancel_job, job) for job in queryset)
        self.message_user(
            request,
            f"{done} of {queryset.count()} jobs canceled.",
            messages.SUCCESS if done else messages.WARNING,
        )

    def delete_model(self, request: HttpRequest, obj: Job) -> None:
        job_services.delete_job(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        for job in queryset:
            job_services.delete_job(job)


@admin.register(Rendition)
class RenditionAdmin(admin.ModelAdmin):
    list_display = ["job", "format", "size", "within_target", "note"]
    list_filter = ["format", "within_target"]
    search_fields = ["job__id", "job__original_name"]
    list_select_related = ["job"]
    readonly_fields = [field.name for field in Rendition._meta.fields]
