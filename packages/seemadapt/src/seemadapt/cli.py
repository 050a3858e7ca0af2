"""``seemadapt`` command line: the Python API behind flags and a YAML config.

seemadapt finetune --config ft.yaml [--set train.max_steps=100] [--max-steps 100] [--push-to-hub me/repo --private]
seemadapt evaluate --model CKPT [--adapters FOLDER|REPO] --data SRC [SRC ...] [--out results/]
seemadapt predict --model CKPT [--adapters ...] --classes a b c --task semantic image.jpg ... --out preds/
seemadapt convert seem_focalt_v1.pt seem-focalt/
seemadapt summary --model tiny [--strategy adapter-backbone/full-head]

The fine-tuning YAML has nested sections that mirror ``finetune()``'s arguments::

    model: xdecoder/SEEM:seem_focalt_v1.pt
    strategy: adapter-backbone/full-head     # or a placement dict (AdapterPlacement fields)
    classes: [mold, stain, background]      # optional (default: the training data's classes)
    data:
      train: [real/, me/wet-damage-synthetic]
      eval: real_val/
    train:                                  # TrainConfig fields
      max_steps: 2000
      output_dir: runs/wet-damage
    push_to_hub: me/seem-wet-damage         # optional; private: true

Flags override ``--set`` overrides, which override the file; the resolved config is written next to the outputs.
Errors print one line that names the field, and exit with status 2 (``--traceback`` shows the whole trace).
Hub tokens come from ``huggingface-cli login`` / ``HF_TOKEN``; there is no token flag (shell histories keep flags).
The command functions import the library (torch, detectron2) when they run, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from seemadapt import __version__
from seemadapt.tasks import DEFAULT_TASKS, TASKS

FINETUNE_SECTIONS = ("model", "strategy", "classes", "data", "train", "push_to_hub", "private")
DATA_KEYS = ("train", "eval")
RESOLVED_FINETUNE = "finetune_config.yaml"
RESOLVED_EVALUATE = "evaluate_config.yaml"
RESOLVED_PREDICT = "predict_config.yaml"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: TrainConfig fields that take a list on the command line; dict fields only go through --set.
_LIST_FIELDS = ("betas", "milestones", "eval_tasks")
_SET_ONLY_FIELDS = ("lr_multipliers", "criterion")


class CLIError(ValueError):
    """A user error the CLI reports in one line (exit status 2)."""


# ----------------------------------------------------------------------------------------------- config helpers


def parse_value(text: str) -> Any:
    """A ``--set`` / flag value as YAML: ``3`` -> 3, ``[a, b]`` -> list, ``null`` / ``none`` -> None."""
    if text.strip().lower() == "none":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _text_or_none(text: str) -> str | None:
    """A string flag (paths, names): kept as typed, except ``none`` / ``null`` -> None."""
    return None if text.strip().lower() in ("none", "null", "~") else text


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` / ``section.key=value`` overrides to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise CLIError(f"--set {item!r}: expected key=value, e.g. --set train.max_steps=100")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise CLIError(f"--set {item!r}: the key is empty")
        target = config
        for depth, part in enumerate(parts[:-1]):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise CLIError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section")
        target[parts[-1]] = parse_value(value)
    return config


def read_yaml(path: str | os.PathLike, flag: str = "--config") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"{flag} {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise CLIError(f"{flag} {path}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise CLIError(f"{flag} {path}: the YAML must be a mapping of sections, got {type(data).__name__}")
    return data


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True))
    return path


def _plain(value: Any) -> Any:
    """YAML-safe values (tuples as lists, configs as dicts, paths as strings)."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _one_or_many(value: Any) -> Any:
    """A single source stays a single source; several become a list (mixed by the data layer)."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return value[0]
    return value


# ----------------------------------------------------------------------------------------------- finetune


def _train_config_class() -> Any:
    from seemadapt.train.config import TrainConfig  # start-up speed: torch loads only when a command runs

    return TrainConfig


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--max-steps``, ``--output-dir``, ``--no-flip`` ...)."""
    group = parser.add_argument_group(
        "training settings (TrainConfig fields; override the YAML's train section)"
    )
    for item in dataclasses.fields(_train_config_class()):
        if item.name in _SET_ONLY_FIELDS:
            continue
        flag = "--" + item.name.replace("_", "-")
        shown = item.default if item.default is not dataclasses.MISSING else "required"
        kwargs: dict[str, Any] = {
            "dest": f"train.{item.name}",
            "default": argparse.SUPPRESS,
            "help": f"default: {shown}",
        }
        if isinstance(item.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif item.name in _LIST_FIELDS:
            group.add_argument(flag, nargs="+", type=parse_value, metavar="VALUE", **kwargs)
        elif isinstance(item.default, str) or "str" in str(item.type):
            group.add_argument(flag, type=_text_or_none, metavar="TEXT", **kwargs)
        else:
            group.add_argument(flag, type=parse_value, metavar="VALUE", **kwargs)


def resolve_finetune_config(args: argparse.Namespace) -> dict[str, Any]:
    """The nested finetune config: YAML file, then ``--set``, then flags."""
    config = read_yaml(args.config) if args.config else {}
    source = f"--config {args.config}: " if args.config else ""
    apply_overrides(config, args.set or [])
    data = _apply_flags(config, args, source)
    unknown = sorted(set(config) - set(FINETUNE_SECTIONS))
    if unknown:
        raise CLIError(f"{source}unknown section(s) {unknown}; the sections are {list(FINETUNE_SECTIONS)}")
    unknown = sorted(set(data) - set(DATA_KEYS))
    if unknown:
        raise CLIError(f"{source}data: unknown key(s) {unknown}; use data.train and data.eval")
    if not data.get("train"):
        raise CLIError(f"{source}data.train: no training data; give --train SRC or data.train in the YAML")
    if "model" not in config:
        raise CLIError(
            f"{source}model: name the base checkpoint, e.g. --model xdecoder/SEEM:seem_focalt_v1.pt"
        )
    return config


def _apply_flags(config: dict[str, Any], args: argparse.Namespace, source: str) -> dict[str, Any]:
    """The finetune flags over ``config`` (in place); returns its data section."""
    for name in ("model", "strategy", "classes", "push_to_hub", "private"):
        value = getattr(args, name, None)
        if value is not None:
            config[name] = value
    data = config.setdefault("data", {})
    if not isinstance(data, dict):
        raise CLIError(f"{source}data must be a section with train: and eval:, got {data!r}")
    if args.train is not None:
        data["train"] = _one_or_many(args.train)
    if args.eval is not None:
        data["eval"] = _one_or_many(args.eval)
    train = config.setdefault("train", {})
    if not isinstance(train, dict):
        raise CLIError(f"{source}train must be a section of TrainConfig fields, got {train!r}")
    for key, value in vars(args).items():
        if key.startswith("train."):
            train[key[len("train.") :]] = value
    return data


def cmd_finetune(args: argparse.Namespace) -> int:
    config = resolve_finetune_config(args)
    TrainConfig = _train_config_class()
    try:
        train_config = TrainConfig.from_dict(dict(config["train"]))
    except (TypeError, ValueError) as error:
        raise CLIError(f"train: {error}") from None
    from seemadapt.adapters import resolve_placement  # start-up speed: torch loads only when a command runs

    placement = resolve_placement(config.get("strategy"))  # fails early on a bad strategy
    resolved = dict(config)
    resolved["train"] = train_config.to_dict()
    output_dir = Path(train_config.output_dir)
    if args.dry_run:
        print(yaml.safe_dump(_plain(resolved), sort_keys=False), end="")
        return 0
    _check_before_work(train_config, config.get("push_to_hub"))
    path = write_yaml(output_dir / RESOLVED_FINETUNE, resolved)
    print(f"resolved config: {path}")
    from seemadapt.finetuning import finetune  # start-up speed: torch loads only when a command runs

    data = config["data"]
    run = finetune(
        train=data["train"],
        eval=data.get("eval"),
        model=config["model"],
        strategy=config.get("strategy") if config.get("strategy") is not None else placement,
        classes=config.get("classes"),
        config=train_config,
    )
    table = getattr(run, "table", None)
    if callable(table):
        print(table())
    repo = config.get("push_to_hub")
    if repo:
        try:
            url = run.push_to_hub(repo, private=bool(config.get("private", False)))
        except Exception as error:  # network, rights, quota: the trained adapters are kept in output_dir
            kept = run.save(output_dir / "adapters")
            raise CLIError(
                f"push_to_hub={repo!r} failed ({type(error).__name__}: {_one_line(error)}); the adapters are kept "
                f"in {kept}: push them later with seemadapt.push_adapters({str(kept)!r}, {repo!r})."
            ) from None
        print(f"pushed to {url}")
    return 0


def _check_before_work(train_config: Any, repo: Any) -> None:
    """Fail before the model loads or anything is written: output folder, resume checkpoint, precision, Hub."""
    from seemadapt.train.preflight import preflight  # start-up speed: torch loads only when a command runs

    preflight(train_config)
    if repo:
        from seemadapt.hub import check_push_access  # start-up speed, as above

        check_push_access(repo, field="push_to_hub")


# ----------------------------------------------------------------------------------------------- evaluate


def _model_from_args(args: argparse.Namespace) -> Any:
    from seemadapt.hub import load_model  # start-up speed: torch loads only when a command runs

    if not args.model and not args.adapters:
        raise CLIError(
            "--model: name a checkpoint or preset (e.g. xdecoder/SEEM:seem_focalt_v1.pt), or give --adapters"
        )
    return load_model(args.model, adapters=args.adapters, device=args.device)


def _image_size(value: Sequence[int] | None) -> Any:
    if value is None:
        return None
    if len(value) not in (1, 2):
        raise CLIError(f"--image-size: give SHORTEST or SHORTEST LONGEST, got {list(value)}")
    return value[0] if len(value) == 1 else tuple(value)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seemadapt.evaluation import evaluate  # start-up speed: torch loads only when a command runs

    model = _model_from_args(args)
    result = evaluate(
        model,
        _one_or_many(args.data),
        classes=args.classes,
        batch_size=args.batch_size,
        tasks=tuple(args.tasks),
        image_size=_image_size(args.image_size),
        grounding=args.grounding,
        progress=not args.no_progress,
        split=args.split,
        max_images=args.max_images,
    )
    print(result.table())
    if args.out:
        out = Path(args.out)
        result.save(out)
        write_yaml(out / RESOLVED_EVALUATE, _resolved(args))
        print(f"results: {out}")
    return 0


def _resolved(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"func", "command", "traceback", "verbose"}
    return {k: v for k, v in vars(args).items() if k not in skip}


# ----------------------------------------------------------------------------------------------- predict


def _read_image(path: Path) -> Any:
    import numpy as np  # start-up speed: numpy, PIL and torch load only when a command runs
    import torch
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise CLIError(f"images: {path} is not a readable image ({type(error).__name__})") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def _image_paths(items: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            raise CLIError(f"images: {item} does not exist")
    if not paths:
        raise CLIError("images: no image files given")
    return paths


def _instance_segments(output: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """An instance result as a segment map (higher scores painted last) for drawing."""
    import torch  # start-up speed: torch loads only when a command runs

    masks, scores, labels = output["masks"], output["scores"], output["labels"]
    seg = torch.zeros(masks.shape[-2:], dtype=torch.int32)
    segments = []
    for rank, index in enumerate(torch.argsort(scores.float().cpu())):
        seg[masks[index].cpu()] = rank + 1
        segments.append(
            {
                "id": rank + 1,
                "category_id": int(labels[index]),
                "isthing": True,
                "score": float(scores[index]),
            }
        )
    present = set(torch.unique(seg).tolist())
    return seg, [s for s in segments if s["id"] in present]


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np  # start-up speed: numpy and PIL load only when a command runs
    from PIL import Image

    from seemadapt.evaluation import image_size_kwargs
    from seemadapt.hub import read_adapter_config
    from seemadapt.visualize import draw_panoptic, draw_semantic
    from segcontract import id2rgb  # start-up speed: torch loads only when a command runs

    classes, things = args.classes, args.thing_classes
    if args.adapters and (classes is None or things is None):
        saved = read_adapter_config(args.adapters)
        classes = classes if classes is not None else saved.classes
        things = things if things is not None else (saved.thing_classes or None)
    if not classes:
        raise CLIError("--classes: name the classes to segment (or give --adapters, which store them)")
    paths = _image_paths(args.images)
    model = _model_from_args(args)
    sizes = image_size_kwargs(_image_size(args.image_size))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(paths), args.batch_size):
        batch = paths[start : start + args.batch_size]
        images = [_read_image(p) for p in batch]
        kwargs = {"thing_classes": things} if args.task != "semantic" else {}
        outputs = model.predict(images, classes, task=args.task, **kwargs, **sizes)
        for path, image, output in zip(batch, images, outputs):
            picture = image.permute(1, 2, 0).numpy()
            stem = out / f"{path.stem}_{args.task}"
            if args.task == "semantic":
                labels = output["labels"].cpu().numpy().astype(np.uint8)
                Image.fromarray(labels, mode="L").save(f"{stem}_labels.png")
                draw_semantic(picture, labels, classes).save(f"{stem}.png")
                continue
            if args.task == "panoptic":
                seg, segments = output["panoptic_seg"].cpu(), output["segments_info"]
            else:
                seg, segments = _instance_segments(output)
            Image.fromarray(id2rgb(seg.numpy().astype(np.int64))).save(f"{stem}_ids.png")
            info = [{**s, "name": classes[int(s["category_id"])]} for s in segments]
            Path(f"{stem}.json").write_text(json.dumps(_plain(info), indent=2) + "\n")
            draw_panoptic(picture, seg, segments, classes).save(f"{stem}.png")
        print(f"{min(start + len(batch), len(paths))}/{len(paths)} images", file=sys.stderr)
    resolved = _resolved(args) | {"classes": list(classes), "thing_classes": things}
    write_yaml(out / RESOLVED_PREDICT, resolved)
    print(f"predictions: {out}")
    return 0


# ----------------------------------------------------------------------------------------------- convert, summary


def cmd_convert(args: argparse.Namespace) -> int:
    from seemadapt.model.convert import (
        convert_checkpoint,  # start-up speed: torch loads only when a command runs
    )

    folder = convert_checkpoint(
        args.src, args.dst, config=args.config, trust_pickle=args.trust_pickle, strict=not args.no_strict
    )
    print(f"converted {args.src} -> {folder}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from seemadapt.adapters import (  # start-up speed: torch loads only when a command runs
        apply_adapters,
        resolve_placement,
    )
    from seemadapt.hub import load_model
    from seemadapt.model.config import PRESETS
    from seemadapt.model.seem import SEEM

    if args.adapters and args.strategy:
        raise CLIError("--strategy: give either --strategy or --adapters (which carry their own placement)")
    if args.model in PRESETS and not args.adapters:
        model = SEEM.from_config(args.model, device="meta")  # shapes only: instant even for focall
    else:
        model = load_model(args.model, adapters=args.adapters)
    if args.strategy:
        report = apply_adapters(model, resolve_placement(args.strategy))
        print(f"strategy: {args.strategy}")
        print(report.table())
        print()
    print(model.summary())
    return 0


# ----------------------------------------------------------------------------------------------- parser


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="base checkpoint (Hub id[:file], file or folder) or preset (tiny, focalt, focall)"
    )
    parser.add_argument(
        "--adapters", help="adapter folder or Hub repo (save_adapters); its base is the default --model"
    )
    parser.add_argument("--device", help="where to run, e.g. cuda or cpu (default: cpu)")
    parser.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        metavar="N",
        help="resize inside the model: SHORTEST [LONGEST] edge (outputs stay at the original size)",
    )


def _add_finetune_parser(sub: Any, command: str | None) -> None:
    ft = sub.add_parser("finetune", help="fine-tune SEEM with adapters (YAML config + flags)")
    ft.add_argument("--config", help="YAML with sections model, strategy, classes, data, train, push_to_hub")
    ft.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.lr=1e-4",
    )
    ft.add_argument("--model", help="base checkpoint, e.g. xdecoder/SEEM:seem_focalt_v1.pt")
    ft.add_argument("--strategy", help="adapter strategy, e.g. adapter-backbone/full-head")
    ft.add_argument("--classes", nargs="+", help="class names (default: the training data's)")
    ft.add_argument(
        "--train", nargs="+", metavar="SRC", help="training sources (several are mixed by class name)"
    )
    ft.add_argument("--eval", nargs="+", metavar="SRC", help="evaluation sources")
    ft.add_argument(
        "--push-to-hub", metavar="REPO", help="push the adapters to this Hub model repo after training"
    )
    ft.add_argument("--private", action="store_true", default=None, help="create the Hub repo as private")
    ft.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    if command == "finetune":
        _add_train_flags(ft)
    ft.set_defaults(func=cmd_finetune)


def _add_evaluate_parser(sub: Any) -> None:
    ev = sub.add_parser("evaluate", help="score a model (+ adapters) on a contract dataset")
    _add_model_flags(ev)
    ev.add_argument(
        "--data", nargs="+", required=True, metavar="SRC", help="dataset sources (folder, Hub id, ...)"
    )
    ev.add_argument("--split", help="split of a multi-split source")
    ev.add_argument("--classes", nargs="+", help="classes to score (default: the dataset's)")
    ev.add_argument(
        "--tasks",
        nargs="+",
        default=list(DEFAULT_TASKS),
        choices=list(TASKS),
        help="what to score (instance: COCO mask AP of the thing classes); one forward pass per batch for all",
    )
    ev.add_argument("--grounding", action="store_true", help="also score text grounding")
    ev.add_argument("--batch-size", type=int, default=2)
    ev.add_argument("--max-images", type=int, help="score only the first N images")
    ev.add_argument("--out", help="folder for results.json, results.md, plots and overlays")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(func=cmd_evaluate)


def _add_other_parsers(sub: Any) -> None:
    pr = sub.add_parser("predict", help="segment images and write overlays")
    _add_model_flags(pr)
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--classes", nargs="+", help="class names (default: the adapters' classes)")
    pr.add_argument("--thing-classes", nargs="+", help="classes that are things (panoptic, instance)")
    pr.add_argument("--task", default="semantic", choices=["semantic", "panoptic", "instance"])
    pr.add_argument("--batch-size", type=int, default=2)
    pr.add_argument("--out", required=True, help="output folder")
    pr.set_defaults(func=cmd_predict)

    cv = sub.add_parser("convert", help="official SEEM .pt -> safetensors folder for SEEM.from_pretrained")
    cv.add_argument("src", help="official checkpoint, e.g. seem_focalt_v1.pt")
    cv.add_argument("dst", help="output folder")
    cv.add_argument("--config", choices=["focalt", "focall", "tiny"], help="model config (default: inferred)")
    cv.add_argument(
        "--trust-pickle", action="store_true", help="allow full unpickling (only for files you trust)"
    )
    cv.add_argument("--no-strict", action="store_true", help="convert even if keys or shapes differ")
    cv.set_defaults(func=cmd_convert)

    sm = sub.add_parser("summary", help="parameter counts per part (and per adapter group with --strategy)")
    sm.add_argument("--model", default="tiny", help="preset (shapes only) or checkpoint")
    sm.add_argument("--strategy", help="apply this adapter strategy and show its trainable parameters")
    sm.add_argument("--adapters", help="adapter folder or Hub repo to load on top")
    sm.set_defaults(func=cmd_summary)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; the finetune flags (one per TrainConfig field) are added when ``command`` is finetune."""
    parser = argparse.ArgumentParser(
        prog="seemadapt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"seemadapt {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages (INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_finetune_parser(sub, command)
    _add_evaluate_parser(sub)
    _add_other_parsers(sub)
    return parser


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (
        CLIError,
        ValueError,
        TypeError,
        KeyError,
        OSError,  # FileNotFoundError, OutputPathError (a file, read-only, disk full), HubAccessError...
        ImportError,
    ) as error:
        if args.traceback:
            raise
        message = _one_line(error.args[0] if isinstance(error, KeyError) and error.args else error)
        print(f"seemadapt {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
