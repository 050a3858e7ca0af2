"""``diffsynth`` command line: the Python API with a YAML config.

diffsynth generate --config gen.yaml [--set masker.tau=3] [--output out/] [--push-to-hub me/repo --private]
diffsynth export DATASET FOLDER [--split train]
diffsynth preview DATASET [--out preview.png] [-n 8]
diffsynth health DATASET
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml


def parse_value(text: str) -> Any:
    """``--set`` values are YAML scalars/lists: ``3`` -> 3, ``[cat, dog]`` -> list, ``null`` -> None."""
    return yaml.safe_load(text)


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` / ``a.b=value`` overrides to a nested dict (a missing ``=`` names the flag)."""
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected key=value, e.g. --set masker.tau=3")
        key, value = item.split("=", 1)
        target = config
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise SystemExit(f"--set {key}: {part!r} is not a section")
        target[parts[-1]] = parse_value(value)
    return config


def _load_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {args.config}: no such file; give the path of a YAML file.")
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(
                f"--config {args.config}: not valid YAML ({' '.join(str(error).split())})."
            ) from None
        if not isinstance(config, dict):
            raise SystemExit(
                f"--config {args.config}: the YAML must be a mapping of GenerationConfig fields."
            )
    for name in ("classes", "num_images", "model", "seed", "batch_size", "strength", "init_images"):
        value = getattr(args, name, None)
        if value is not None:
            config[name] = value
    return apply_overrides(config, args.set or [])


def cmd_generate(args: argparse.Namespace) -> int:
    # Imported here, not at the top: these modules load torch/datasets (seconds); `diffsynth --help` stays fast.
    from diffsynth.generation import GenerationConfig, generate_from_config

    raw = _load_config(args)
    try:
        config = GenerationConfig(**raw)
    except TypeError as error:
        raise SystemExit(f"config: {error}") from None
    output = Path(args.output) if args.output else None
    sharding = {"shard_size": args.shard_size, "overwrite": args.overwrite} if output is not None else {}
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.push_to_hub:  # token, repo and write access are checked before any image is drawn
        from diffsynth.hub import check_push_access  # start-up speed, as above

        check_push_access(args.push_to_hub, token, field="--push-to-hub")
    ds = generate_from_config(
        config, progress=not args.quiet, output_dir=str(output) if output else None, **sharding
    )
    if ds is None:  # a non-main process of a multi-process run: the main process merges and reports
        return 0
    if output is not None:
        # Written once the run succeeded, so a refused resume never overwrites the folder's own record.
        (output / "generation_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        print(f"diffsynth: {len(ds)} samples in {output} (parquet shards; open with diffsynth.io.load_any)")
    if args.push_to_hub:
        print(f"diffsynth: pushed to {_push(args, ds, output, token)}")
    if output is None and not args.push_to_hub:
        print("diffsynth: nothing kept (no --output and no --push-to-hub); generated", len(ds), "samples")
    return 0


def _push(args: argparse.Namespace, ds: Any, output: Path | None, token: str | None) -> Any:
    """Push the finished dataset; if the push fails, the dataset stays on disk and the error says where."""
    # Imported here for start-up speed, as above.
    from diffsynth.hub import push_to_hub
    from diffsynth.shards import push_shards_to_hub

    try:
        if output is not None:
            return push_shards_to_hub(output, args.push_to_hub, dataset=ds, private=args.private, token=token)
        return push_to_hub(ds, args.push_to_hub, private=args.private, token=token)
    except Exception as error:  # network, rights, quota: keep the work
        kept = output
        if kept is None:
            kept = Path(f"diffsynth-unpushed-{args.push_to_hub.replace('/', '--')}")
            ds.save_to_disk(str(kept))
        raise OSError(
            f"--push-to-hub {args.push_to_hub}: the push failed ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:200]}); the dataset is kept in {kept}: push it later with "
            f"diffsynth.push_to_hub(diffsynth.load_any({str(kept)!r}), {args.push_to_hub!r})."
        ) from None


def cmd_export(args: argparse.Namespace) -> int:
    # Imported here, not at the top: these modules load torch/datasets (seconds); `diffsynth --help` stays fast.
    from diffsynth.export import export_coco
    from diffsynth.io import load_any

    ds = load_any(args.dataset, split=args.split)
    path = export_coco(ds, args.folder, split=args.split, overwrite=args.overwrite)
    print(f"diffsynth: exported {len(ds)} images to {path}")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    # Imported here, not at the top: these modules load torch/datasets (seconds); `diffsynth --help` stays fast.
    from diffsynth.io import load_any
    from diffsynth.preview import preview_grid

    ds = load_any(args.dataset, split=args.split)
    grid = preview_grid(ds, n=args.n)
    grid.save(args.out)
    print(f"diffsynth: preview of {min(args.n, len(ds))} images in {args.out}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    # Imported here, not at the top: these modules load torch/datasets (seconds); `diffsynth --help` stays fast.
    from diffsynth.health import format_health, health_report
    from diffsynth.io import load_any

    report = health_report(load_any(args.dataset, split=args.split))
    print(json.dumps(report, indent=2, default=str) if args.json else format_health(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffsynth", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="draw an annotated dataset (GenerationConfig in YAML)")
    gen.add_argument(
        "--config", help="YAML file with GenerationConfig fields (masker settings under `masker:`)"
    )
    gen.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    gen.add_argument("--classes", nargs="+", help="class names (overrides the config)")
    gen.add_argument("--num-images", dest="num_images", type=int)
    gen.add_argument("--model", help='"tiny", a Hub id or a local folder')
    gen.add_argument("--seed", type=int)
    gen.add_argument("--batch-size", dest="batch_size", type=int)
    gen.add_argument("--strength", type=float)
    gen.add_argument("--init-images", dest="init_images", help="folder of domain images (image-to-image)")
    gen.add_argument(
        "--output", help="folder: resumable parquet shards, their manifest and the resolved config"
    )
    gen.add_argument(
        "--shard-size", dest="shard_size", type=int, default=100, help="samples per parquet shard"
    )
    gen.add_argument("--overwrite", action="store_true", help="replace a folder made with other arguments")
    gen.add_argument("--push-to-hub", dest="push_to_hub", metavar="REPO_ID")
    gen.add_argument("--private", action="store_true")
    gen.add_argument("--token-env", default="HF_TOKEN", help="environment variable holding the Hub token")
    gen.add_argument("--quiet", action="store_true", help="no progress bars")
    gen.set_defaults(func=cmd_generate)

    exp = sub.add_parser("export", help="write the COCO-panoptic layout (+ semantic PNGs, grounding JSON)")
    exp.add_argument("dataset", help="save_to_disk folder, parquet/repo folder, or Hub id")
    exp.add_argument("folder")
    exp.add_argument("--split", default="train")
    exp.add_argument("--overwrite", action="store_true")
    exp.set_defaults(func=cmd_export)

    pre = sub.add_parser("preview", help="a grid of images with mask overlays")
    pre.add_argument("dataset")
    pre.add_argument("--out", default="preview.png")
    pre.add_argument("-n", type=int, default=8)
    pre.add_argument("--split", default="train")
    pre.set_defaults(func=cmd_preview)

    health = sub.add_parser(
        "health", help="per-class pixels/instances, empty prompted classes, ignore fraction"
    )
    health.add_argument("dataset")
    health.add_argument("--split", default="train")
    health.add_argument("--json", action="store_true")
    health.set_defaults(func=cmd_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe (`| head`) shows here, inside the handler below
        return status
    except BrokenPipeError:
        # The reader went away (`diffsynth health --json | head`): no traceback, and none at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, TypeError, OSError) as error:  # SDK errors subclass these; each names its field
        print(f"diffsynth {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
