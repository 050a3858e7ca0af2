"""Crash-safe file writing: a file is written under a hidden per-process temporary name, fsynced and renamed
(``os.replace`` is atomic), so it exists under its real name only when complete."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["fsync_dir", "host_pid", "remove_temps", "temp_path", "write_json_atomic"]


def host_pid() -> str:
    """``<host>-<pid>``: tells apart the temporary files of processes sharing a folder (also across machines)."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def temp_path(path: Path) -> Path:
    """The hidden temporary name ``.<name>.<host>-<pid>.tmp`` under which ``path`` is written."""
    return path.with_name(f".{path.name}.{host_pid()}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (where the platform allows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = temp_path(path)
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_temps(folder: Path, stem: str = "") -> None:
    """Delete the temporary files of ``folder`` (of the file named ``stem`` only, when given)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(f".{stem}") and entry.name.endswith(".tmp") and entry.is_file():
            entry.unlink(missing_ok=True)
