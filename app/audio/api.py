"""REST API for audio jobs (DRF). Every query is scoped to the requesting user: another user's
job is a 404, never a 403."""

from typing import cast

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import owner_redis_key
from core import log_context

from .models import WAVEFORM_CONTENT_TYPES, Job
from .permissions import JobActionThrottle, UploadThrottle
from .presets import PRESETS
from .serializers import JobSerializer, UploadSerializer
from .services import events, media_store
from .services import jobs as job_services

JSON = "application/json"


def refused(exc: job_services.Refused) -> Response:
    headers = {"Retry-After": "30"} if exc.status in (429, 507) else None
    return Response({"detail": str(exc)}, status=exc.status, headers=headers)


class PresetList(APIView):
    @extend_schema(responses={200: dict})
    def get(self, request: Request) -> Response:
        return Response([preset.as_dict() for preset in PRESETS.values()])


class NewestFirst(CursorPagination):
    """Cursor pages, newest first: no COUNT(*) of the user's jobs on every read, and pages that
    stay put while new jobs arrive."""

    ordering = "-created_at"


class JobViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = JobSerializer
    pagination_class = NewestFirst
    parser_classes = [MultiPartParser, JSONParser]

    def get_queryset(self) -> QuerySet[Job]:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no user
            return Job.objects.none()
        jobs = Job.objects.owned_by(self.request.user).prefetch_related("renditions")
        wanted = self.request.query_params.get("status")
        if wanted:
            jobs = jobs.filter(status=wanted)
        return jobs

    def get_throttles(self) -> list:
        if self.action == "create":
            return [UploadThrottle()]
        if self.action in ("cancel", "rerun"):
            return [JobActionThrottle()]
        return super().get_throttles()

    @extend_schema(
        parameters=[OpenApiParameter("status", str, enum=list(Job.Status.values))],
    )
    def list(  # type: ignore[override]  # a plain HttpResponse: the cached JSON bytes
        self, request: Request, *args: object, **kwargs: object
    ) -> HttpResponse:
        """A page is read once per change of the user's jobs and then served from the cache, as
        the JSON bytes sent (rendering the page was a sixth of the read's time), found in one
        round trip to Redis."""
        if request.accepted_renderer.format != "json":  # the browsable API renders its own
            return super().list(request, *args, **kwargs)
        owner = cast(User, request.user)  # IsAuthenticated, the default permission
        key, body = events.cached_page(owner.pk, request.build_absolute_uri())
        if body is not None:
            return HttpResponse(body, content_type=JSON)
        body = cast(  # JSONRenderer renders bytes
            bytes, request.accepted_renderer.render(super().list(request, *args, **kwargs).data)
        )
        if key is not None:
            events.store_page(key, body)
        return HttpResponse(body, content_type=JSON)

    @extend_schema(
        request={"multipart/form-data": UploadSerializer}, responses={202: JobSerializer}
    )
    def create(self, request: Request) -> Response:
        upload = UploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        try:
            job = job_services.create_job(
                cast(User, request.user),
                upload.validated_data["file"],
                upload.validated_data["preset"],
            )
        except job_services.Refused as exc:
            return refused(exc)
        return Response(self.get_serializer(job).data, status=status.HTTP_202_ACCEPTED)

    def perform_destroy(self, instance: Job) -> None:
        job_services.delete_job(instance)

    @extend_schema(request=None, responses={200: JobSerializer, 409: dict, 429: dict})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        try:
            job_services.cancel_job(job)
        except job_services.Refused as exc:
            return refused(exc)
        return Response(self.get_serializer(job).data)

    @extend_schema(request=None, responses={202: JobSerializer, 409: dict, 429: dict})
    @action(detail=True, methods=["post"])
    def rerun(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        try:
            job_services.rerun_job(job)
        except job_services.Refused as exc:
            return refused(exc)
        return Response(self.get_serializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(detail=True, methods=["get"], url_path=r"renditions/(?P<fmt>[a-z0-9]+)")
    def rendition(self, request: Request, pk: str | None = None, fmt: str = "") -> HttpResponse:
        job = self.get_object()
        rendition = job.renditions.filter(format=fmt).first()
        if rendition is None:
            raise Http404
        stem = "".join(c for c in job.original_name.rsplit(".", 1)[0] if c.isalnum() or c in "-_ ")
        extension = rendition.file_name.rsplit(".", 1)[-1]
        name = f"{(stem.strip() or 'audio')[:80]}-{job.preset}.{extension}"
        return media_store.download(rendition.path, rendition.content_type, name)

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    @action(
        detail=True,
        methods=["get"],
        url_path=rf"waveform\.(?P<kind>{'|'.join(WAVEFORM_CONTENT_TYPES)})",
    )
    def waveform(self, request: Request, pk: str | None = None, kind: str = "") -> HttpResponse:
        job = self.get_object()
        if not job.has_waveform:
            raise Http404
        return media_store.download(job.waveform_path(kind), WAVEFORM_CONTENT_TYPES[kind])


_job_list_view = JobViewSet.as_view({"get": "list", "post": "create"}, basename="job", detail=False)
# What DRF adds to the list's responses (tests/integration/test_audio_api_queries.py compares).
_LIST_HEADERS = {"Allow": "GET, POST, HEAD, OPTIONS", "Vary": "Accept"}


@csrf_exempt  # as DRF's views are: its authentication classes enforce CSRF for sessions
def job_list(request: HttpRequest) -> HttpResponseBase:
    """/api/jobs/. The main read, a page already cached for a token's owner, is sent from one
    round trip to Redis before DRF is involved: DRF's dispatch (negotiation, authentication,
    permissions) and a second round trip for the token were half of its time (profiled
    in-process). The token counts as valid exactly when CachedTokenAuthentication would take
    it from its cache. Anything else (a miss, another method, a session, another renderer) is
    the viewset's."""
    if request.method == "GET":
        found = _cached_page_for_token(request)
        if found is not None:
            owner_id, body = found
            log_context.user_id.set(owner_id)
            return HttpResponse(body, content_type=JSON, headers=_LIST_HEADERS)
    return _job_list_view(request)


def _cached_page_for_token(request: HttpRequest) -> tuple[int, bytes] | None:
    keyword, _, key = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if keyword != "Token" or not key or " " in key:
        return None
    # DRF would pick the JSON renderer: no ?format=, and JSON or anything accepted.
    if "format" in request.GET or request.META.get("HTTP_ACCEPT", "*/*") not in ("*/*", JSON):
        return None
    return events.cached_page_for_token(owner_redis_key(key), request.build_absolute_uri())
