"""The package's layers: only the web layer (and the entry point) speaks HTTP, the store
imports no other layer, and the README's module table names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mailhub"
#: Modules that assemble web servers besides the web layer itself.
ENTRY_POINTS = {PACKAGE / "cli.py"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _outside_web() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if (PACKAGE / "web") not in path.parents and path not in ENTRY_POINTS
    ]


@pytest.mark.parametrize("path", _outside_web(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_web_layer_imports_aiohttp_web(path: Path) -> None:
    assert not [name for name in _imports(path) if name.startswith(("aiohttp.web", "mailhub.web"))]


@pytest.mark.parametrize("layer", ["store", "delivery", "live"])
def test_lower_layers_do_not_import_the_web_layer(layer: str) -> None:
    for path in (PACKAGE / layer).rglob("*.py"):
        assert not any(name.startswith(("mailhub.web", "aiohttp")) for name in _imports(path)), path


#: Modules every layer may use.
SHARED = {"settings", "errors", "metrics", "header_safety", "reasons", "clock", "background"}


def test_the_store_imports_no_other_layer() -> None:
    for path in (PACKAGE / "store").rglob("*.py"):
        own = {name.split(".")[1] for name in _imports(path) if name.startswith("mailhub.")}
        assert own <= SHARED | {"store"}, path


def _modules() -> set[str]:
    return {
        str(path.relative_to(PACKAGE).with_suffix(""))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }


def test_the_readmes_module_table_names_every_module() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    architecture = readme.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in architecture.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([a-z_/]+)`", row.split(" | ")[0])}
    assert _modules() <= named, sorted(_modules() - named)
    assert named <= _modules(), sorted(named - _modules())
