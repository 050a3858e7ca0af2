"""The folders the user opened: every local path typed in the browser must resolve inside one of them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Roots"]


@dataclass(frozen=True)
class Roots:
    """Allowed folders; :meth:`resolve` refuses anything else, so a browser tab cannot read or write elsewhere."""

    folders: tuple[Path, ...]

    def __post_init__(self) -> None:
        if not self.folders:
            raise ValueError("Roots needs at least one folder the user opened.")
        object.__setattr__(self, "folders", tuple(Path(f).resolve() for f in self.folders))

    @classmethod
    def of(cls, folders: Iterable[str | os.PathLike]) -> Roots:
        return cls(tuple(Path(f) for f in folders))

    def allows(self, path: str | os.PathLike) -> bool:
        resolved = Path(path).expanduser().resolve()
        return any(resolved == root or resolved.is_relative_to(root) for root in self.folders)

    def resolve(self, path: str | os.PathLike) -> Path:
        """``path`` resolved (symlinks followed, relative to the first folder); PermissionError outside them."""
        candidate = Path(path).expanduser()
        if not candidate.is_absolute():
            candidate = self.folders[0] / candidate
        resolved = candidate.resolve()
        if not self.allows(resolved):
            opened = ", ".join(str(f) for f in self.folders)
            raise PermissionError(f"{str(path)!r} is outside the folders opened for this app ({opened}).")
        return resolved
