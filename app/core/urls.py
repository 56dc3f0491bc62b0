from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts import api as accounts_api
from accounts import views as accounts_views

urlpatterns = [
    path("", include("health.urls")),
    path("", include("audio.web_urls")),
    path("accounts/signup/", accounts_views.signup, name="signup"),
    path("accounts/verify/<str:token>/", accounts_views.verify_email, name="verify-email"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include("audio.urls")),
    path("api/auth/signup/", accounts_api.Signup.as_view(), name="api-signup"),
    path("api/auth/token/", accounts_api.ObtainToken.as_view(), name="api-token"),
    path(
        "api/auth/verify/resend/",
        accounts_api.ResendVerification.as_view(),
        name="api-verify-resend",
    ),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("admin/", admin.site.urls),
]
