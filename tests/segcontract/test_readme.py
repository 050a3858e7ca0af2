"""The README's example (what PyPI shows) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "packages" / "segcontract" / "README.md"


def test_readme_example_runs(capsys):
    code = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]
    exec(compile(code, str(README), "exec"), {})
    assert "Category(id=0, name='polyp', isthing=True" in capsys.readouterr().out
