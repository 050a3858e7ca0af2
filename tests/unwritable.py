"""Calls into a folder that is really read-only, also when the tests run as root (who may write anywhere).

The folder gets mode 0o555. The kernel refuses a non-root user's writes there as it is; root passes file modes by its
``CAP_DAC_OVERRIDE`` capability, so the call runs in a child process whose root lacks it (``setpriv`` drops it from
the bounding set before the child starts): its writes are refused by the kernel as anyone else's, with no patched
``os.access``. The child's exception comes back as the same type with the same message.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

#: run a command as root without the capabilities that let root read and write past file modes
WITHOUT_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]

_CHILD = """\
import json
from pathlib import Path

folder = Path({folder!r})
try:
{code}
except Exception as error:
    print(json.dumps([type(error).__module__, type(error).__qualname__, str(error)]))
else:
    print(json.dumps(None))
"""


@contextlib.contextmanager
def read_only_folder(parent: Path) -> Iterator[Path]:
    """An empty folder under ``parent`` with mode 0o555 (writable again afterwards, so it can be cleaned up)."""
    folder = parent / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)


def call_where_unwritable(code: str, folder: Path, timeout: float = 600) -> None:
    """Run Python ``code`` (with ``folder`` bound) in a child process that cannot write ``folder``; re-raise the
    exception it ended with. Asserts that nothing was written into ``folder``."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip(
                "tests run as root and setpriv is missing: no way to take root's write-anywhere right"
            )
        prefix = WITHOUT_OVERRIDE
    program = _CHILD.format(folder=str(folder), code=textwrap.indent(code, "    "))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(
        [*prefix, sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=timeout
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    assert not list(folder.iterdir()), sorted(folder.iterdir())  # nothing written where nothing may be
    raised = json.loads(lines[-1])
    if raised is not None:
        module, name, message = raised
        raise getattr(importlib.import_module(module), name)(message)
