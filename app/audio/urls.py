from django.urls import include, path
from rest_framework.routers import DefaultRouter

from . import api

router = DefaultRouter(trailing_slash=True)
router.register("jobs", api.JobViewSet, basename="job")

app_name = "audio-api"
urlpatterns = [
    path("presets/", api.PresetList.as_view(), name="presets"),
    # Before the router's route for the same path: the main read's short way (api.job_list).
    path("jobs/", api.job_list, name="job-list"),
    path("", include(router.urls)),
]
