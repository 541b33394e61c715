"""``python -m labs_analytics``: the `labs-analytics` command (how `serve` starts its flushers)."""

from labs_analytics.cli import app

app(prog_name="labs-analytics")
