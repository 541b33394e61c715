"""The Dockerfile and docker-compose.yml agree with the code they deploy.

No Docker engine is needed: the files are parsed, and every `labs-analytics`
command line in them is parsed by the real CLI (the typer app), so renaming a
command or an option breaks this test rather than a deployment.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from sqlalchemy.engine import make_url

from labs_analytics import cli
from labs_analytics.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = "labs-analytics"
APP_SERVICES = {"migrate", "api", "flusher"}
EXPECTED_SERVICES = {"postgres", "redis", "pgweb", "redisinsight", *APP_SERVICES}


# --- reading the files -----------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    # safe_load resolves the x- anchors and `<<` merges as Compose does.
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict), "docker-compose.yml is not a mapping"
    return loaded


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def command_tokens(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(token) for token in command]


def cli_services() -> dict[str, list[str]]:
    """Services whose command runs our CLI, with that command's tokens."""
    found = {}
    for name, service in services().items():
        tokens = command_tokens(service.get("command"))
        if tokens and tokens[0] == PROGRAM:
            found[name] = tokens
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(entry.split("=", 1) if "=" in entry else (entry, "") for entry in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """Host port → container port, from the short or the long port syntax."""
    ports = {}
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ports[int(entry["published"])] = int(entry["target"])
            continue
        mapping = str(entry).split("/", 1)[0]
        parts = mapping.rsplit(":", 2)  # [ip:]host:container, the ip may hold colons
        if len(parts) < 2:
            continue  # a container port alone is published on a random host port
        ports[int(parts[-2])] = int(parts[-1])
    return ports


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def flag_values(tokens: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a server command line (redis-server)."""
    values = {}
    for flag, value in itertools.pairwise(tokens):
        if flag.startswith("--") and not value.startswith("--"):
            values[flag] = value
    return values


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


@cache
def dockerfile() -> tuple[Instruction, ...]:
    instructions = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # comments may sit inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return tuple(instructions)


def dockerfile_all(keyword: str) -> list[str]:
    return [i.arguments for i in dockerfile() if i.keyword == keyword]


def exec_form(arguments: str) -> list[str]:
    if arguments.startswith("["):
        parsed = json.loads(arguments)
        assert isinstance(parsed, list)
        return [str(token) for token in parsed]
    return shlex.split(arguments)


def stages() -> list[tuple[str, str | None]]:
    """(base image, stage name) of each FROM, with global ARG defaults substituted."""
    args: dict[str, str] = {}
    found: list[tuple[str, str | None]] = []
    for instruction in dockerfile():
        if instruction.keyword == "ARG" and not found:
            arg, _, default = instruction.arguments.partition("=")
            args[arg.strip()] = default.strip()
        elif instruction.keyword == "FROM":
            words = [w for w in instruction.arguments.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            stage = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            found.append((image, stage))
    return found


# --- the CLI, introspected -----------------------------------------------------


def parse_cli(tokens: list[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Parse a `labs-analytics ...` command line with the real typer app.

    Returns the subcommand path and the parsed parameters; fails the test with
    what is wrong (unknown command, unknown option, bad or missing value).
    """
    assert tokens[:1] == [PROGRAM], f"not a {PROGRAM} command: {tokens}"
    command: Any = typer.main.get_command(cli.app)
    path: list[str] = []
    rest = tokens[1:]
    while getattr(command, "commands", None) and rest and not rest[0].startswith("-"):
        if rest[0] not in command.commands:
            pytest.fail(
                f"`{shlex.join(tokens)}`: no command {rest[0]!r} in `{' '.join([PROGRAM, *path])}`"
                f" (it has: {', '.join(sorted(command.commands))})"
            )
        path.append(rest.pop(0))
        command = command.commands[path[-1]]
    if getattr(command, "commands", None) and not getattr(command, "invoke_without_command", False):
        pytest.fail(f"`{shlex.join(tokens)}` names a command group, not a command")

    known = {"--help"}
    for param in command.params:
        known.update(param.opts, param.secondary_opts)
    unknown = [
        token.split("=", 1)[0]
        for token in rest
        if token.startswith("-") and token.split("=", 1)[0] not in known
    ]
    if unknown:
        pytest.fail(
            f"`{shlex.join(tokens)}`: `{' '.join([PROGRAM, *path])}` has no option "
            f"{', '.join(unknown)} (it has: {', '.join(sorted(known))})"
        )
    try:
        context = command.make_context(" ".join([PROGRAM, *path]), list(rest))
    except Exception as exc:  # the CLI's own usage error: a bad or missing value
        pytest.fail(f"`{shlex.join(tokens)}` does not parse: {exc}")
    return tuple(path), dict(context.params)


# --- docker-compose.yml ----------------------------------------------------------


def test_compose_defines_every_service_of_the_stack() -> None:
    assert set(services()) >= EXPECTED_SERVICES
    assert set(cli_services()) == APP_SERVICES


def test_compose_commands_exist_in_the_cli() -> None:
    commands = {name: parse_cli(tokens)[0] for name, tokens in cli_services().items()}

    assert commands == {"migrate": ("migrate",), "api": ("serve",), "flusher": ("flusher",)}


def test_compose_api_ingests_only_and_leaves_flushing_to_the_flusher_service() -> None:
    _, params = parse_cli(cli_services()["api"])

    assert params["no_flusher"] is True


def test_api_port_mapping_matches_the_serve_port() -> None:
    _, params = parse_cli(cli_services()["api"])

    # Bound to every interface, or the published port reaches nothing.
    assert params["host"] == "0.0.0.0"
    assert published_ports(services()["api"]) == {8000: params["port"]}


def test_admin_uis_are_published_on_8001_and_8002() -> None:
    pgweb, redisinsight = services()["pgweb"], services()["redisinsight"]

    assert pgweb["image"].split(":")[0] == "sosedoff/pgweb"
    assert published_ports(pgweb) == {8002: 8081}
    assert redisinsight["image"].split(":")[0] == "redis/redisinsight"
    assert published_ports(redisinsight) == {8001: 5540}


def test_pgweb_and_redis_insight_point_at_the_compose_servers() -> None:
    pgweb_url = make_url(environment(services()["pgweb"])["PGWEB_DATABASE_URL"])
    postgres_env = environment(services()["postgres"])

    assert pgweb_url.host == "postgres"
    assert pgweb_url.username == postgres_env["POSTGRES_USER"]
    assert pgweb_url.database == postgres_env["POSTGRES_DB"]
    assert environment(services()["redisinsight"])["RI_REDIS_HOST"] == "redis"


def test_redis_persists_every_second_and_never_evicts() -> None:
    redis = services()["redis"]
    tokens = command_tokens(redis["command"])

    assert tokens[0] == "redis-server"
    flags = flag_values(tokens)
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    # Eviction would silently drop acknowledged events from the stream.
    assert flags["--maxmemory-policy"] == "noeviction"


def test_stateful_services_keep_their_data_in_named_volumes() -> None:
    named = set(compose().get("volumes") or {})
    mounts = {
        name: {str(v).split(":", 1)[0] for v in services()[name].get("volumes") or []}
        for name in ("postgres", "redis")
    }

    assert mounts["postgres"] & named, "postgres data is not in a named volume"
    assert mounts["redis"] & named, "redis data is not in a named volume"
    assert services()["postgres"]["image"].split(":")[1].startswith("16")
    assert services()["redis"]["image"].split(":")[1].startswith("7")


def test_servers_report_health_for_the_services_that_wait_on_them() -> None:
    postgres_check = " ".join(command_tokens(services()["postgres"]["healthcheck"]["test"]))
    redis_check = command_tokens(services()["redis"]["healthcheck"]["test"])

    assert "pg_isready" in postgres_check
    assert redis_check[-2:] == ["redis-cli", "ping"]


def test_migrate_runs_once_before_the_api_and_the_flusher() -> None:
    migrate = services()["migrate"]

    # Quoted in YAML: a bare `no` is the boolean false, which Compose refuses.
    assert migrate["restart"] == "no"
    assert "build" in migrate
    assert depends_on(migrate) == {"postgres": "service_healthy"}
    for name in ("api", "flusher"):
        assert depends_on(services()[name]) == {
            "migrate": "service_completed_successfully",
            "redis": "service_healthy",
        }, name


def test_services_without_http_turn_off_the_image_health_check() -> None:
    # The image's HEALTHCHECK asks /healthz; a flusher would be marked unhealthy.
    for name in ("migrate", "flusher"):
        assert services()[name].get("healthcheck", {}).get("disable") is True, name


def test_compose_environment_names_are_settings_fields() -> None:
    prefix = str(Settings.model_config.get("env_prefix") or "").upper()
    fields = {prefix + name.upper() for name in Settings.model_fields}

    for name in APP_SERVICES:
        env = environment(services()[name])
        assert {"DATABASE_URL", "REDIS_URL"} <= set(env), name
        assert set(env) <= fields, f"{name}: not a setting: {sorted(set(env) - fields)}"


def test_compose_environment_points_at_the_compose_servers() -> None:
    env = environment(services()["api"])
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in env.items()})
    database, postgres_env = make_url(settings.database_url), environment(services()["postgres"])

    assert database.host == "postgres"
    assert (database.username, database.password, database.database) == (
        postgres_env["POSTGRES_USER"],
        postgres_env["POSTGRES_PASSWORD"],
        postgres_env["POSTGRES_DB"],
    )
    assert make_url(settings.redis_url).host == "redis"
    assert all(environment(services()[name]) == env for name in APP_SERVICES)


# --- Dockerfile ------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_python_slim() -> None:
    found = stages()

    assert len(found) >= 2
    assert all(image.startswith("python:3.11-slim") for image, _ in found), found


def test_dockerfile_copies_the_built_venv_into_the_runtime_stage() -> None:
    build_stages = {name for _, name in stages()[:-1] if name}
    copies_from_build = [
        args
        for args in dockerfile_all("COPY")
        if (m := re.search(r"--from=(\S+)", args)) and m.group(1) in build_stages
    ]

    assert any("/opt/venv" in args for args in copies_from_build), copies_from_build
    assert any("pip wheel" in args for args in dockerfile_all("RUN"))


def test_dockerfile_builds_and_installs_the_sdk_the_service_imports() -> None:
    copies = dockerfile_all("COPY")
    runs = " ".join(dockerfile_all("RUN"))

    assert any(args.split()[0] == "clients/python" for args in copies), copies
    assert "pip wheel --no-deps --wheel-dir /dist ./clients/python ." in runs
    assert "labs_analytics_client-*.whl" in runs


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = dockerfile_all("USER")

    assert users, "the Dockerfile never sets USER: the service would run as root"
    user = users[-1].split(":", 1)[0]
    assert user not in ("root", "0")


def test_dockerfile_cmd_exists_in_the_cli() -> None:
    path, params = parse_cli(exec_form(dockerfile_all("CMD")[-1]))

    assert path == ("serve",)
    assert params["host"] == "0.0.0.0"


def test_dockerfile_exposes_and_health_checks_the_port_it_serves() -> None:
    _, params = parse_cli(exec_form(dockerfile_all("CMD")[-1]))
    healthcheck = dockerfile_all("HEALTHCHECK")[-1]

    assert dockerfile_all("EXPOSE") == [str(params["port"])]
    assert f"127.0.0.1:{params['port']}/healthz" in healthcheck
    # Neither curl nor wget is in the slim image.
    assert "curl" not in healthcheck
    assert "wget" not in healthcheck


def test_build_context_keeps_what_the_wheel_needs_and_leaves_out_the_rest() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }

    assert not ignored & {"pyproject.toml", "README.md", "src", "alembic", "clients"}
    assert {".git", ".venv", ".env"} <= ignored
