from django.urls import path

from . import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("diagnostics/database", views.diagnostics_database, name="diagnostics-database"),
    path("diagnostics/request", views.diagnostics_request, name="diagnostics-request"),
    path("diagnostics/task", views.diagnostics_task, name="diagnostics-task"),
    path("diagnostics/error", views.diagnostics_error, name="diagnostics-error"),
]
