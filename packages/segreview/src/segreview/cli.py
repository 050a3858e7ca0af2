"""``segreview [DATASET] [--model tiny] [--adapters DIR]``: the review app on localhost."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from segreview.paths import Roots
from segreview.source import is_hub_id

__all__ = ["build_parser", "main", "roots_for"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segreview",
        description="Review a contract dataset sample by sample and try SEEM (with adapters) in the browser.",
    )
    parser.add_argument(
        "dataset", nargs="?", default="", help="dataset folder, shard folder or Hub id to open"
    )
    parser.add_argument("--model", default="tiny", help="SEEM checkpoint or preset for the try-out tab")
    parser.add_argument("--adapters", default="", help="adapter folder or Hub id for the try-out tab")
    parser.add_argument(
        "--root",
        action="append",
        default=[],
        help="a folder the browser may read and write (repeatable); default: the current folder and the "
        "dataset's parent folder",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: localhost only)")
    parser.add_argument(
        "--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free)"
    )
    return parser


def roots_for(dataset: str, roots: Sequence[str], adapters: str = "") -> Roots:
    """The folders the user opened: ``--root`` ones, else the current folder plus the parents of local paths
    given on the command line (so the kept subset can be written next to the dataset)."""
    if roots:
        return Roots.of(roots)
    folders = [Path.cwd()]
    for given in (dataset, adapters):
        if given and not (is_hub_id(given) and not Path(given).exists()):
            folders.append(Path(given).expanduser().resolve().parent)
    return Roots.of(folders)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # A local review tool: nothing leaves the machine, Gradio's usage analytics included.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # Imported here for start-up speed: gradio, torch and datasets take seconds and --help needs none of them.
    from segreview.app import build_app, launch
    from segreview.callbacks import AppState

    state = AppState(roots_for(args.dataset, args.root, args.adapters))
    demo = build_app(state, args.dataset, args.model, args.adapters)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"segreview: serving on {args.host}: anyone who reaches it can read and write {state.roots.folders}."
        )
    launch(demo, args.host, args.port or int(os.environ.get("SEGREVIEW_PORT", 0)) or None)
