"""Output folders: checked before any work, and write failures named by the field that chose the folder.

Both SDKs write large outputs (datasets, checkpoints); a folder that is a file, read-only or on a full disk should
fail at once, or at least say which argument names the folder and what to do, instead of a raw errno text.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from segcontract.errors import OutputPathError

__all__ = ["check_output_dir", "output_write_error"]

#: errno values that mean "this folder cannot take the output", with the fix for each.
_FIXES = {
    errno.ENOSPC: "the disk is full: free space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another folder",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
}
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\]")


def check_output_dir(path: str | os.PathLike, field: str) -> Path:
    """``path`` as a folder that can be created or written; :class:`OutputPathError` naming ``field`` if not.

    Nothing is created: the nearest existing folder above ``path`` is checked for write access."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{field}={str(path)!r} is a file; give a folder (new or existing).")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(
            f"{field}={str(path)!r} cannot be created: {str(existing)!r} is a file; give a folder path."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"{field}={str(path)!r} is not writable ({str(existing)!r} is read-only for this user); give a "
            "folder you can write to."
        )
    return folder


def output_write_error(error: BaseException, path: str | os.PathLike, field: str) -> OutputPathError | None:
    """The :class:`OutputPathError` for a failed write under ``path`` (disk full, read-only...), or None when
    ``error`` is not such a failure (then the caller re-raises it as it is)."""
    code = getattr(error, "errno", None)
    if code is None:
        found = _ERRNO_TEXT.search(str(error))
        code = int(found.group(1)) if found else None
    if code not in _FIXES:
        return None
    return OutputPathError(
        f"{field}={str(path)!r}: writing failed, {_FIXES[code]} ({str(error).splitlines()[0][:160]})."
    )
