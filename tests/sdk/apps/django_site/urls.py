"""Routes: a health check (excluded), clubs under an include()d namespace, one that raises.

The user is the ``X-User`` header (the user function raises when
``X-User-Broken`` is sent); ``…/join/`` tracks an event of its own without
``user=``, so its user can only come from the middleware's scope.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path

from labs_analytics_client.django import settings_client
from tests.sdk.apps.served_by import served_by


class BoomError(Exception):
    pass


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", headers=served_by())


def club(request: HttpRequest, club_id: int) -> JsonResponse:
    return JsonResponse({"club": club_id}, headers=served_by())


def join(request: HttpRequest, club_id: int) -> JsonResponse:
    settings_client().track("club.joined", properties={"club": club_id})  # no user=: the scope's
    return JsonResponse({"joined": club_id})


def boom(request: HttpRequest) -> HttpResponse:
    raise BoomError("the view failed")


class UserLookupError(Exception):
    pass


def user_of(request: HttpRequest) -> str | None:
    if "X-User-Broken" in request.headers:
        raise UserLookupError("the user store is down")
    return request.headers.get("X-User")


clubs = (
    [
        path("clubs/<int:club_id>/", club, name="club"),
        path("clubs/<int:club_id>/join/", join, name="join"),
    ],
    "clubs",
)

urlpatterns = [
    path("healthz/", healthz),
    path("api/", include(clubs)),
    path("boom/", boom),
]
