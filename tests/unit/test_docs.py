"""The README and .env.example stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from labs_analytics.cli import app
from labs_analytics.settings import Settings


def test_every_setting_is_documented_in_readme_and_env_example(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    env_example = (repo_root / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in readme, name
        assert re.search(rf"^# {name.upper()}=", env_example, re.MULTILINE), name


def test_every_cli_command_is_in_the_readme(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    for name, command in group.commands.items():
        assert f"labs-analytics {name}" in readme, name
        for sub in getattr(command, "commands", {}):
            assert f"{name} {sub}" in readme, f"{name} {sub}"


def test_readme_make_targets_exist(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    makefile = (repo_root / "Makefile").read_text()
    for target in set(re.findall(r"make ([a-z][a-z-]+)", readme)):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), target
