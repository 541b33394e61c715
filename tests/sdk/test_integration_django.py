"""The Django middleware in a Django project served by gunicorn (2 sync workers).

The scenario is shared with the Flask extension's test (``frameworks.py``):
routes with ``include()`` prefixes, a view that raises, a 404, the user, a
``track()`` in a view that gets the user from the middleware's scope, a user
function that raises; all stored once, by the drain at the workers' exit.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from labs_analytics.settings import Settings
from tests.helpers import ServeProcess
from tests.sdk.frameworks import DJANGO, every_request_stored_once_when_gunicorn_stops


async def test_every_request_is_stored_once_with_its_route_template_when_gunicorn_stops(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await every_request_stored_once_when_gunicorn_stops(
        DJANGO, shared_server, sdk_settings, db, tmp_path
    )
