"""The CLI loads prometheus_client only once `serve` has chosen its metrics mode.

prometheus_client decides at import whether samples go to
PROMETHEUS_MULTIPROC_DIR (shared by the API and its flusher processes); a
module the CLI imports at start that loaded it would fix the wrong mode.
"""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_cli_does_not_load_prometheus_client() -> None:
    code = "import sys, labs_analytics.cli; print('prometheus_client' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
