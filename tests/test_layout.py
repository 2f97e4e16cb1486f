"""The package's layers: only the web layer (and the entry point) speaks HTTP."""

from __future__ import annotations

import ast
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
