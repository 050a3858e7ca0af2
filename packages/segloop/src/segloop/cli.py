"""``segloop --config loop.yaml --rounds N [--output-dir DIR] [--no-resume] [--no-progress]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from segloop.run import run_loop

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segloop",
        description="closed loop: generate (diffsynth) -> fine-tune -> evaluate (seemadapt), N rounds",
    )
    parser.add_argument("--config", required=True, help="loop YAML (see segloop.LoopConfig)")
    parser.add_argument("--rounds", type=int, required=True, help="rounds to have finished")
    parser.add_argument("--output-dir", default="seemadapt-loop", help="where every round is kept")
    parser.add_argument("--no-resume", action="store_true", help="refuse a folder that already holds a loop")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run_loop(
            args.config,
            args.rounds,
            args.output_dir,
            resume=not args.no_resume,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"segloop: error: {error}", file=sys.stderr)
        return 2
    print(result.table())
    print(f"plot: {result.plot}")
    return 0
