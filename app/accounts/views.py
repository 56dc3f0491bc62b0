from django import forms
from django.contrib.auth import get_user_model, login
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from . import services
from .throttles import signup_allowed


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=True, help_text="We send a link to confirm it.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")


def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    if request.method == "POST":
        if not signup_allowed(request):
            form.add_error(None, "Too many accounts were created lately; try again later.")
            return render(request, "registration/signup.html", {"form": form}, status=429)
        if form.is_valid():
            user = services.register(
                form.cleaned_data["username"],
                form.cleaned_data["email"],
                form.cleaned_data["password1"],
            )
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("audio:jobs")
    return render(request, "registration/signup.html", {"form": form})


def verify_email(request: HttpRequest, token: str) -> HttpResponse:
    verified = services.verify(token) is not None
    return render(
        request,
        "registration/verify_done.html",
        {"verified": verified},
        status=200 if verified else 400,
    )
