"""Wall time of the command lines' answers that a user waits for: ``--help`` and config validation (``--dry-run``).

Each command runs in a fresh interpreter (``python -c "from <cli> import main; main([...])"``), ``--repeats`` times;
the fastest and the median wall time are printed (on a shared machine the fastest run is the least disturbed), with
the heavy libraries each command imported. Target: <= 2 s each.

Run: ``python benchmarks/bench_cli_startup.py [--repeats 5]`` (about half a minute).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "detectron2", "transformers", "diffusers", "datasets", "accelerate")
CONFIG = "model: tiny\nstrategy: adapter-backbone/full-head\ndata:\n  train: data/\ntrain:\n  max_steps: 3\n"
PROBE = """
import sys
from {module} import main
try:
    main({argv!r})
except SystemExit:
    pass
print("heavy:", ",".join(m for m in {heavy!r} if m in sys.modules) or "none", file=sys.stderr)
"""


def commands(config: Path) -> list[tuple[str, str, list[str]]]:
    return [
        ("seemadapt finetune --help", "seemadapt.cli", ["finetune", "--help"]),
        ("seemadapt finetune --dry-run", "seemadapt.cli", ["finetune", "--config", str(config), "--dry-run"]),
        ("seemadapt evaluate --help", "seemadapt.cli", ["evaluate", "--help"]),
        ("diffsynth generate --help", "diffsynth.cli", ["generate", "--help"]),
    ]


def run_once(module: str, argv: list[str]) -> tuple[float, str]:
    script = PROBE.format(module=module, argv=argv, heavy=HEAVY)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    heavy = next((line for line in done.stderr.splitlines() if line.startswith("heavy:")), "heavy: ?")
    return wall, heavy.split(":", 1)[1].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "ft.yaml"
        config.write_text(CONFIG)
        print(f"CLI start-up, fresh interpreter per run, {args.repeats} runs each (target <= 2 s)")
        for label, module, argv in commands(config):
            runs = [run_once(module, argv) for _ in range(args.repeats)]
            walls = [wall for wall, _ in runs]
            print(
                f"  {label:<30} fastest {min(walls):5.2f} s  median {statistics.median(walls):5.2f} s  "
                f"heavy imports: {runs[-1][1]}"
            )
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
