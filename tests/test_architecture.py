"""The package layers hold: imports only point down (segcontract <- diffsynth, seemadapt <- segloop), and every
function stays short enough to read at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGES = Path(__file__).resolve().parents[1] / "packages"
MAX_FUNCTION_LINES = 80

#: package -> the workspace packages it must never import
FORBIDDEN = {
    "segcontract": {"diffsynth", "seemadapt", "segloop", "segreview"},
    "diffsynth": {"seemadapt", "segloop", "segreview"},
    "seemadapt": {"diffsynth", "segloop", "segreview"},
    "segloop": {"segreview"},
}


def _sources(package: str) -> list[Path]:
    return sorted((PACKAGES / package / "src").rglob("*.py"))


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted module name) of every absolute import, wherever it is (module top, function, class)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level name) of every absolute import."""
    return [(line, name.split(".")[0]) for line, name in _imported_modules(tree)]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down_the_layers(package):
    files = _sources(package)
    assert files, f"no sources under packages/{package}/src"
    offending = [
        f"{path.relative_to(PACKAGES)}:{line} imports {name}"
        for path in files
        for line, name in _imported(ast.parse(path.read_text(encoding="utf-8")))
        if name in FORBIDDEN[package]
    ]
    assert not offending, "\n".join(offending)


def test_the_loop_package_sits_on_top():
    names = {name for path in _sources("segloop") for _, name in _imported(ast.parse(path.read_text()))}
    assert {"diffsynth", "seemadapt", "segcontract"} <= names


def test_no_function_is_longer_than_80_lines():
    too_long = []
    for path in sorted(PACKAGES.glob("*/src/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGES)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, f"{len(too_long)} functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(too_long)


#: seemadapt's own layers, bottom up: adapters (they fill the model's hooks, and know the model only by module names)
#: -> adapter files -> the model (which can load adapters) -> hub, training, evaluation. Path -> modules it must not
#: import.
SEEMADAPT_FORBIDDEN = {
    "seemadapt/adapters": ("seemadapt.model", "seemadapt.adapter_files", "seemadapt.hub", "seemadapt.train"),
    "seemadapt/adapter_files.py": ("seemadapt.model", "seemadapt.hub", "seemadapt.train"),
    "seemadapt/model": ("seemadapt.hub", "seemadapt.train", "seemadapt.data", "seemadapt.evaluation"),
}


@pytest.mark.parametrize("part", sorted(SEEMADAPT_FORBIDDEN))
def test_seemadapt_layers_point_down(part):
    root = PACKAGES / "seemadapt" / "src"
    files = [root / part] if part.endswith(".py") else sorted((root / part).rglob("*.py"))
    offending = [
        f"{path.relative_to(root)}:{line} imports {name}"
        for path in files
        for line, name in _imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        if any(name == module or name.startswith(module + ".") for module in SEEMADAPT_FORBIDDEN[part])
    ]
    assert not offending, "\n".join(offending)


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def test_no_private_name_is_imported_across_modules():
    """``from x import _y`` or ``import x._y``: another module's private name is no API to build on."""
    found = []
    for path in sorted(PACKAGES.glob("*/src/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [
                f"{path.relative_to(PACKAGES)}:{node.lineno} {name}" for name in names if _private(name)
            ]
    assert not found, "\n".join(found)
