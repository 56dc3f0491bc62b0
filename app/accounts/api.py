"""Sign-up and API tokens. Sessions (login/logout/password reset) use Django's auth views."""

from typing import cast

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import services
from .throttles import SIGNUP_THROTTLES, LoginThrottle, VerificationResendThrottle


class SignupSerializer(serializers.Serializer):
    username = serializers.RegexField(r"^[\w.@+-]{3,150}$")
    email = serializers.EmailField()
    password = serializers.CharField(write_only=True, style={"input_type": "password"})

    def validate_username(self, value: str) -> str:
        if get_user_model().objects.filter(username__iexact=value).exists():
            raise serializers.ValidationError("this username is taken")
        return value

    def validate(self, data: dict) -> dict:
        user = get_user_model()(username=data["username"], email=data["email"])
        password_validation.validate_password(data["password"], user)
        return data

    def create(self, data: dict) -> User:
        return services.register(data["username"], data["email"], data["password"])


class Signup(GenericAPIView):
    """Creates the account and emails a link that confirms the address; uploads need that."""

    permission_classes = [permissions.AllowAny]
    throttle_classes = list(SIGNUP_THROTTLES)
    serializer_class = SignupSerializer

    def check_throttles(self, request: Request) -> None:
        """In order, stopping at the first refusal: a client refused per address must not also
        use up the global allowance (DRF asks every throttle)."""
        for throttle in self.get_throttles():
            if not throttle.allow_request(request, self):
                self.throttled(request, throttle.wait())  # type: ignore[arg-type]  # DRF takes None

    def post(self, request: Request) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = serializer.save()
        token, _ = Token.objects.get_or_create(user=user)
        return Response(
            {"username": user.username, "token": token.key, "verification": "sent"},
            status=status.HTTP_201_CREATED,
        )


class ResendVerification(APIView):
    throttle_classes = [VerificationResendThrottle]

    @extend_schema(request=None, responses={200: dict, 202: dict, 429: dict})
    def post(self, request: Request) -> Response:
        user = cast(User, request.user)  # IsAuthenticated, the default permission
        if services.is_verified(user):
            return Response({"detail": "your email address is already confirmed"})
        services.request_verification(user)
        return Response(
            {"detail": f"a new link is on its way to {user.email}"}, status=status.HTTP_202_ACCEPTED
        )


class ObtainToken(ObtainAuthToken):
    throttle_classes = [LoginThrottle]
