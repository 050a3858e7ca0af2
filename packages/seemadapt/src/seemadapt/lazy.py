"""Public names imported on first access (PEP 562), one implementation for seemadapt's packages.

``import seemadapt`` (and the CLI's ``--help``) must not pay for torch, detectron2 or peft; a package lists its
public names with the module that defines each, and this builds the module-level ``__getattr__`` / ``__dir__``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str,
    table: Mapping[str, str | tuple[str, str]],
    prepare: Callable[[], None] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps a public name to its module, or to
    ``(module, attribute)`` where the attribute is named differently; a loaded name is cached in the package.
    ``prepare`` runs before a name is first imported (e.g. a compatibility shim the imported library needs)."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = target if isinstance(target, tuple) else (target, name)
        if prepare is not None:
            prepare()
        value = getattr(importlib.import_module(module), attribute)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
