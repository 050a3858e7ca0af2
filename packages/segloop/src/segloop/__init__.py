"""segloop: the closed loop between diffsynth (synthetic data) and seemadapt (SEEM adapters).

Each round generates images for the classes the fine-tuned model segments worst, fine-tunes on them and evaluates::

    from segloop import run_loop

    result = run_loop("loop.yaml", rounds=4, output_dir="runs/loop")
    print(result.table())                   # per-class IoU per round

or from a shell: ``segloop --config loop.yaml --rounds 4 --output-dir runs/loop``.
"""

from segloop.cli import main
from segloop.config import LoopConfig
from segloop.records import LoopResult, RoundResult
from segloop.run import run_loop

__version__ = "0.1.0"

__all__ = ["LoopConfig", "LoopResult", "RoundResult", "__version__", "main", "run_loop"]
