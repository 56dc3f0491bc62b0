from django.urls import path
from django.views.generic import RedirectView

from . import views

app_name = "audio"
urlpatterns = [
    path("", RedirectView.as_view(pattern_name="audio:jobs"), name="home"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/events/", views.events, name="events"),
    path("jobs/<uuid:pk>/", views.job, name="job"),
]
