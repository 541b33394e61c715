"""Routes: a health check (excluded), clubs under an include()d namespace, one that raises."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path


class BoomError(Exception):
    pass


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def club(request: HttpRequest, club_id: int) -> JsonResponse:
    return JsonResponse({"club": club_id})


def boom(request: HttpRequest) -> HttpResponse:
    raise BoomError("the view failed")


def user_of(request: HttpRequest) -> str | None:
    return request.headers.get("X-User")


clubs = ([path("clubs/<int:club_id>/", club, name="club")], "clubs")

urlpatterns = [
    path("healthz/", healthz),
    path("api/", include(clubs)),
    path("boom/", boom),
]
