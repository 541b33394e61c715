"""The SDK's shape: its modules import one another without a cycle, and the clients'
public surface carries no delivery bookkeeping."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import labs_analytics_client
from labs_analytics_client import AnalyticsClient, AsyncAnalyticsClient

PACKAGE = Path(labs_analytics_client.__file__).parent
NAME = "labs_analytics_client"


def _imports(path: Path) -> set[str]:
    """The package's modules this one imports, TYPE_CHECKING blocks included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == NAME:  # from labs_analytics_client import _exchange
                found |= {f"{NAME}.{alias.name}" for alias in node.names}
            elif node.module.startswith(f"{NAME}."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(f"{NAME}.")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {f"{NAME}.{path.stem}": path for path in PACKAGE.glob("*.py")}
    modules[NAME] = modules.pop(f"{NAME}.__init__")
    return {name: _imports(path) & modules.keys() for name, path in modules.items()}


def test_the_sdk_modules_import_one_another_without_a_cycle() -> None:
    graph = _graph()
    assert graph.get(f"{NAME}._core"), "the graph is empty: wrong files"
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            cycle = " -> ".join((*path[path.index(module) :], module))
            raise AssertionError(f"import cycle: {cycle}")
        if module in done:
            return
        for imported in sorted(graph[module]):
            if imported != NAME:  # the package's __init__ only re-exports
                visit(imported, (*path, module))
        done.add(module)

    for module in sorted(graph):
        if module != NAME:
            visit(module, ())


def test_the_clients_public_surface_has_no_delivery_bookkeeping() -> None:
    bookkeeping = {"delivered", "retrying", "failed", "abandoned", "sent_at", "abort_at"}
    for client in (AnalyticsClient, AsyncAnalyticsClient):
        public = {name for name, _ in inspect.getmembers(client) if not name.startswith("_")}
        assert not public & bookkeeping, (client.__name__, public & bookkeeping)
        assert {"track", "flush", "stats", "timed", "scope", "replay"} <= public
