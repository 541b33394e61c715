"""The Flask extension in a Flask app served by gunicorn (2 sync workers).

The scenario is shared with the Django middleware's test (``frameworks.py``):
URL rules with a blueprint's prefix, a view that raises, a 404, the user, a
``track()`` in a view that gets the user from the extension's scope, a user
function that raises; all stored once, by the drain at the workers' exit.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from labs_analytics.settings import Settings
from tests.helpers import ServeProcess
from tests.sdk.frameworks import FLASK, every_request_stored_once_when_gunicorn_stops


async def test_every_request_is_stored_once_with_its_url_rule_when_gunicorn_stops(
    shared_server: ServeProcess, sdk_settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await every_request_stored_once_when_gunicorn_stops(
        FLASK, shared_server, sdk_settings, db, tmp_path
    )
