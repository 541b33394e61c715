"""A Flask app for gunicorn: a blueprint with a path parameter, a route that raises.

The client takes its key and URL from LABS_ANALYTICS_API_KEY and
LABS_ANALYTICS_URL; its flush interval is an hour, so what the server stores
was delivered by the drain at shutdown, not by the timer.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Request

from labs_analytics_client import AnalyticsClient
from labs_analytics_client.flask import LabsAnalytics


class BoomError(Exception):
    pass


def user_of(request: Request) -> str | None:
    return request.headers.get("X-User")


analytics = AnalyticsClient(flush_interval=3600)
app = Flask(__name__)
api = Blueprint("api", __name__, url_prefix="/api")


@api.route("/clubs/<int:club_id>", methods=["GET", "POST"])
def club(club_id: int) -> dict[str, int]:
    return {"club": club_id}


@app.get("/healthz")
def healthz() -> str:
    return "ok"


@app.get("/boom")
def boom() -> str:
    raise BoomError("the view failed")


app.register_blueprint(api)
LabsAnalytics(app, client=analytics, exclude_routes={"/healthz"}, user=user_of)
