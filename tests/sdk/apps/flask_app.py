"""A Flask app for gunicorn: a blueprint with a path parameter, a route that raises.

The user is the ``X-User`` header (the user function raises when
``X-User-Broken`` is sent); ``…/join`` tracks an event of its own without
``user=``, so its user can only come from the extension's scope.

The client takes its key and URL from LABS_ANALYTICS_API_KEY and
LABS_ANALYTICS_URL; its flush interval is an hour and a batch holds 1000
events, so what the server stores was delivered by the drain at shutdown, not
by the timer or a full batch.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Request

from labs_analytics_client import AnalyticsClient
from labs_analytics_client.flask import LabsAnalytics
from tests.sdk.apps.served_by import served_by


class BoomError(Exception):
    pass


class UserLookupError(Exception):
    pass


def user_of(request: Request) -> str | None:
    if "X-User-Broken" in request.headers:
        raise UserLookupError("the user store is down")
    return request.headers.get("X-User")


analytics = AnalyticsClient(flush_interval=3600, batch_size=1000)
app = Flask(__name__)
api = Blueprint("api", __name__, url_prefix="/api")


@api.route("/clubs/<int:club_id>", methods=["GET", "POST"])
def club(club_id: int) -> tuple[dict[str, int], dict[str, str]]:
    return {"club": club_id}, served_by()


@api.post("/clubs/<int:club_id>/join")
def join(club_id: int) -> dict[str, int]:
    analytics.track("club.joined", properties={"club": club_id})  # no user=: the scope's
    return {"joined": club_id}


@app.get("/healthz")
def healthz() -> tuple[str, dict[str, str]]:
    return "ok", served_by()


@app.get("/boom")
def boom() -> str:
    raise BoomError("the view failed")


app.register_blueprint(api)
LabsAnalytics(app, client=analytics, exclude_routes={"/healthz"}, user=user_of)
