"""The machine and the commit a run measured, for the report's first line."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Machine:
    when: dt.datetime  # UTC
    commit: str
    cores: int
    memory_gib: float
    platform: str  # "Linux x86_64, Python 3.11.7"


def this_machine() -> Machine:
    return Machine(
        when=dt.datetime.now(dt.UTC),
        commit=git_commit(),
        cores=psutil.cpu_count() or 0,
        memory_gib=psutil.virtual_memory().total / 2**30,
        platform=f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
    )


def git_commit() -> str:
    """The short hash of HEAD, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
