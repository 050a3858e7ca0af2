"""SEEM v1 parity for maintainers: seemadapt against the original code, stage by stage, on shared random weights.

Two processes exchange tensors through files, because the two codes need incompatible environments (the original
pins detectron2 0.6, transformers 4.34 and numpy < 2; seemadapt needs transformers 5 and numpy 2):

1. this script (the project's environment) writes the inputs of every case to ``WORK/inputs.pt``;
2. it runs ``tools/seem_parity_ref.py`` with ``--ref-python`` (the original code's environment), which builds the
   original tiny model from ``--seem-ref``, runs every case and writes ``WORK/reference.pt`` (its random state dict
   included);
3. it loads that state dict strictly into seemadapt's tiny model, runs the same cases and prints the largest absolute
   difference per stage (losses: relative; matching: number of differing assignments).

Cases: inference stages (backbone, pixel decoder, eval class embeddings, every decoder layer's outputs) on a batch
of equal and of different sizes; training (``forward_seg`` + criterion + backward) with the spatial branch off, on
without and with a click round, class-mode grounding with a repeated class, sentence grounding with a repeated
sentence, and a batch of different sizes. Training randomness is aligned by seeding python, NumPy and torch as the
original does and giving seemadapt no generators (so it draws from the same global streams in the same order).

Usage::

    PYTHONPATH=packages/seemadapt/src /work/main/.venv/bin/python tools/seem_parity.py \\
        --seem-ref /path/to/seem --ref-python /path/to/ref-venv/bin/python [--work DIR]
"""

from __future__ import annotations

import argparse
import inspect
import random
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seemadapt.model import SEEM, tiny_config
from seemadapt.model.grounding import text_hash
from seemadapt.model.interactive import add_corrective_clicks
from seemadapt.train.criterion import CriterionConfig, SEEMCriterion
from seemadapt.train.targets import build_targets

CLASSES = ["cat", "dog", "car", "sky", "grass"]
THINGS = ["cat", "dog", "car"]
TASKS = ("semantic", "panoptic", "instance")
SENTENCES = ["the cat on the left", "a dog", "the cat on the left"]  # as seem_parity_ref.py grounds


# ---------------------------------------------------------------------------------------------------- inputs


def _box(h: int, w: int, rows: tuple[int, int], cols: tuple[int, int]) -> Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def make_image(index: int, size: tuple[int, int], grounding: str, seed: int) -> dict[str, Any]:
    """One synthetic training image: sky band, grass, two things; grounding in ``grounding`` mode."""
    h, w = size
    g = torch.Generator().manual_seed(seed + index)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    a, b = (0, 1) if index % 2 == 0 else (2, 0)
    if grounding == "class_repeat":
        b = a  # two segments of one class: two templates, one hash
    t1 = _box(h, w, (h // 2, h // 2 + h // 4), (w // 8, w // 8 + w // 3))
    t2 = _box(h, w, (h // 2 + 2, h - 2), (w // 2 + 4, w - 3)) & ~t1
    sky = _box(h, w, (0, h // 3), (0, w))
    grass = ~(t1 | t2 | sky)
    if grounding == "text":
        texts = [
            f"the {CLASSES[a]} on the left",
            f"the {CLASSES[b]} at the bottom right",
            f"the {CLASSES[a]} on the left",
        ]
        gmasks, hashes = torch.stack([t1, t2, t1]), [text_hash(t) for t in texts]
    else:
        texts = [f"a photo of a {CLASSES[a]}.", f"a photo of the {CLASSES[b]}.", "a sky."]
        gmasks, hashes = (
            torch.stack([t1, t2, sky]),
            [text_hash(CLASSES[a]), text_hash(CLASSES[b]), text_hash("sky")],
        )
    cand = t1 if index % 2 == 0 else t2
    ys, xs = torch.nonzero(cand, as_tuple=True)
    k = int(torch.randint(0, len(ys), (1,), generator=g))
    shape = (
        _box(h, w, (max(0, int(ys[k]) - 1), int(ys[k]) + 2), (max(0, int(xs[k]) - 1), int(xs[k]) + 2)) & cand
    )
    labels = torch.tensor([a, b, 3, 4])
    return {
        "image": image,
        "masks": torch.stack([t1, t2, sky, grass]),
        "labels": labels,
        "is_things": torch.tensor([int(int(c) < 3) for c in labels]),
        "grounding": {
            "masks": gmasks,
            "texts": texts,
            "mode": "text" if grounding == "text" else "class",
            "hash": hashes,
        },
        "spatial_gt": cand[None].clone(),
        "spatial_shape": shape[None],
    }


def make_inputs(seed: int = 0) -> dict[str, Any]:
    square, mixed = [(64, 64), (64, 64)], [(64, 64), (48, 40)]

    def batch(sizes, modes):
        return [make_image(i, s, modes[i % len(modes)], seed) for i, s in enumerate(sizes)]

    def images(sizes):
        g = torch.Generator().manual_seed(seed)
        return [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in sizes]

    training = {
        "spatial off": dict(spatial=False, rounds=0, images=batch(square, ["text", "class"])),
        "spatial on, no click": dict(spatial=True, rounds=0, images=batch(square, ["text", "class"])),
        "spatial on, 1 click round": dict(spatial=True, rounds=1, images=batch(square, ["text", "class"])),
        "class grounding, repeated class": dict(
            spatial=False, rounds=0, images=batch(square, ["class_repeat"])
        ),
        "sentence grounding, repeated text": dict(spatial=False, rounds=0, images=batch(square, ["text"])),
        "sizes 64x64 + 48x40, spatial off": dict(
            spatial=False, rounds=0, images=batch(mixed, ["text", "class"])
        ),
    }
    for i, case in enumerate(training.values()):
        case["seed"] = seed + i
    return {
        "classes": CLASSES,
        "things": THINGS,
        "eval": {"equal sizes": images(square), "different sizes": images(mixed)},
        "training": training,
    }


# ---------------------------------------------------------------------------------------------------- ours


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_ours(state: dict[str, Tensor], spatial: bool) -> SEEM:
    config = tiny_config(num_classes=len(CLASSES))
    config.backbone.drop_path_rate = 0.0
    config.language.context_length = 16
    model = SEEM(config)
    keys = set(model.state_dict())
    model.load_state_dict({k: v for k, v in state.items() if k in keys}, strict=True)
    if not spatial:  # same weights; the spatial-off original simply has no spatial parameters
        pass
    return model.eval()


def our_stages(model: SEEM, images: list[Tensor]) -> dict[str, Any]:
    with torch.no_grad():
        batch = model.preprocess(images)
        features = model.backbone(batch.tensor)
        mask_features, multi_scale = model.sem_seg_head.pixel_decoder(features)
        class_embs = model.class_embeddings(CLASSES, mode="eval")
        decoder = model.decoder(multi_scale, mask_features, class_embs)
    tasks = [model.predict(images, CLASSES, t, THINGS, object_mask_threshold=0.0, top_k=10) for t in TASKS]
    inference = [
        {"sem_seg": s["sem_seg"], "panoptic": p["panoptic_seg"], "instance_scores": i["scores"]}
        for s, p, i in zip(*tasks)
    ]
    return {
        "inference": inference,
        "grounding": model.ground(images[0], SENTENCES)["mask_logits"],
        "backbone": dict(features),
        "class_embeddings": class_embs,
        "decoder": decoder,
        "pixel_decoder": {
            "mask_features": mask_features,
            **{f"level{i}": m for i, m in enumerate(multi_scale)},
        },
    }


def _records(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "instances": types.SimpleNamespace(gt_classes=r["labels"], gt_masks=r["masks"]),
            "groundings": r["grounding"],
        }
        for r in images
    ]


def _pad(mask: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.nn.functional.pad(mask, (0, size[1] - mask.shape[-1], 0, size[0] - mask.shape[-2]))


def _click_rounds(model: SEEM, batch: Any, case: dict[str, Any]) -> tuple[dict[str, Any], list[Tensor], list]:
    """The no-grad click rounds of ``forward_seg`` on the case's own prompt shapes."""
    size = batch.padded_size
    gt = [_pad(r["spatial_gt"], size) for r in case["images"]]
    positive = [_pad(r["spatial_shape"], size) for r in case["images"]]
    negative = [torch.zeros_like(p) for p in positive]
    prev, clicks = None, []
    with torch.no_grad():
        mask_features, multi_scale, _ = model.encode_image(batch)
        for _ in range(case["rounds"]):
            spatial = {"pos_masks": positive, "neg_masks": negative}
            if prev is not None:
                spatial["prev_mask"] = prev
            prev = model.decoder(multi_scale, mask_features, None, spatial=spatial, task="spatial")[
                "prev_mask"
            ]
            positive, negative, _ = add_corrective_clicks(
                prev, gt, positive, negative, image_sizes=batch.image_sizes
            )
            clicks.append({"pos": positive, "neg": negative})
    spatial = {"pos_masks": positive, "neg_masks": negative}
    if prev is not None:
        spatial["prev_mask"] = prev
    return spatial, gt, clicks


def our_training(model: SEEM, criterion: SEEMCriterion, case: dict[str, Any]) -> dict[str, Any]:
    calls: list = []
    hook = criterion.matcher.register_forward_hook(
        lambda _m, _a, out: calls.append([(a.tolist(), b.tolist()) for a, b in out])
    )
    images = [r["image"] for r in case["images"]]
    texts = [r["grounding"]["texts"] for r in case["images"]]
    hashes = [r["grounding"]["hash"] for r in case["images"]]
    model.zero_grad(set_to_none=True)
    model.train()
    seed_all(case["seed"])
    try:
        batch = model.preprocess(images)
        spatial, gt, clicks = _click_rounds(model, batch, case) if case["spatial"] else (None, None, [])
        kwargs = (
            {"grounding_hash": hashes}
            if "grounding_hash" in inspect.signature(model.forward_train).parameters
            else {}
        )
        outputs = model(images, CLASSES, texts, rng=None, spatial=spatial, **kwargs)
        targets = build_targets(_records(case["images"]), outputs, torch.device("cpu"))
        for target, masks in zip(targets, gt or [None] * len(targets)):
            if masks is not None:
                target["gt_spatial_masks"] = masks
        losses = criterion(outputs, targets, logit_scale=outputs["logit_scale"])
        sum(losses.values()).backward()
    finally:
        hook.remove()
        model.eval()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {
        "losses": {k: v.detach() for k, v in losses.items()},
        "matching": calls,
        "clicks": clicks,
        "decoder": outputs,
        "gradients": grads,
    }


# ---------------------------------------------------------------------------------------------------- compare


def max_abs(a: Any, b: Any) -> float:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape:
            return float("inf")
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict):
        return max([max_abs(a[k], b[k]) for k in a if k in b] or [0.0])
    if isinstance(a, list | tuple):
        return max([max_abs(x, y) for x, y in zip(a, b)] or [0.0]) if len(a) == len(b) else float("inf")
    return 0.0


DECODER_KEYS = ("pred_logits", "pred_masks", "pred_gmasks", "pred_gtexts", "pred_smasks", "pred_captions")


def decoder_rows(ours: dict[str, Any], ref: dict[str, Any]) -> list[tuple[str, float]]:
    rows = []
    layers = [*(ref.get("aux_outputs") or []), ref]
    mine = [*(ours.get("aux_outputs") or []), ours]
    for i, (r, o) in enumerate(zip(layers, mine)):
        for key in DECODER_KEYS:
            if isinstance(r.get(key), Tensor) and isinstance(o.get(key), Tensor):
                rows.append((f"decoder layer {i} {key}", max_abs(o[key], r[key])))
    return rows


def sorted_(result: dict[str, Any]) -> Tensor:
    return result["instance_scores"].sort(descending=True).values


def inference_rows(ours: dict[str, Any], ref: dict[str, Any]) -> list[tuple[str, float]]:
    """Post-processed outputs: semantic scores, panoptic ids (pixels differing), instance scores, grounding."""
    pairs = list(zip(ours["inference"], ref["inference"]))
    panoptic = sum(int((o["panoptic"] != r["panoptic"]).sum()) for o, r in pairs)
    return [
        ("semantic inference sem_seg", max(max_abs(o["sem_seg"], r["sem_seg"]) for o, r in pairs)),
        ("panoptic inference (pixels with another segment id)", float(panoptic)),
        # the original lists instances in top-k order of the class scores, seemadapt by final score: compare sorted
        ("instance inference scores (sorted)", max(max_abs(sorted_(o), sorted_(r)) for o, r in pairs)),
        (
            "text grounding mask logits (3 sentences, one repeated)",
            max_abs(ours["grounding"], ref["grounding"]),
        ),
    ]


def training_rows(ours: dict[str, Any], ref: dict[str, Any]) -> list[tuple[str, float]]:
    rows = decoder_rows(ours["decoder"], ref["decoder"])
    for i, (o, r) in enumerate(zip(ours["clicks"], ref["clicks"])):
        rows.append(
            (
                f"click round {i} prompt masks (pixels differing)",
                float(sum(int((a != b).sum()) for a, b in zip(o["pos"] + o["neg"], r["pos"] + r["neg"]))),
            )
        )
    rows.append(
        (
            "matching (assignments differing)",
            float(sum(a != b for a, b in zip(ours["matching"], ref["matching"])))
            + abs(len(ours["matching"]) - len(ref["matching"])),
        )
    )
    common = [k for k in ref["losses"] if k in ours["losses"]]
    missing = len(set(ref["losses"]) ^ set(ours["losses"]))
    rel = max(
        float(abs(ours["losses"][k] - ref["losses"][k]) / max(abs(float(ref["losses"][k])), 1e-8))
        for k in common
    )
    rows.append((f"loss terms ({len(common)} compared, {missing} unmatched), max relative", rel))
    grads = [k for k in ref["gradients"] if k in ours["gradients"]]
    rows.append(
        (
            f"gradients ({len(grads)} tensors), max abs",
            max_abs({k: ours["gradients"][k] for k in grads}, {k: ref["gradients"][k] for k in grads}),
        )
    )
    rows.append(
        (
            "gradients, max relative (per tensor, to its max)",
            max(
                float(
                    (ours["gradients"][k] - ref["gradients"][k]).abs().max()
                    / ref["gradients"][k].abs().max().clamp_min(1e-12)
                )
                for k in grads
            ),
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seem-ref", required=True, type=Path, help="the original SEEM repository (has modeling/)"
    )
    parser.add_argument("--ref-python", required=True, help="python of the original code's environment")
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the exchanged files (default: temp)"
    )
    parser.add_argument("--reuse", action="store_true", help="reuse WORK/reference.pt from an earlier run")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="seem_parity_"))
    work.mkdir(parents=True, exist_ok=True)
    spec = make_inputs()
    torch.save(spec, work / "inputs.pt")
    if not (args.reuse and (work / "reference.pt").is_file()):
        script = Path(__file__).with_name("seem_parity_ref.py")
        subprocess.run(
            [
                args.ref_python,
                "-W",
                "ignore",
                str(script),
                "--seem-ref",
                str(args.seem_ref),
                "--work",
                str(work),
            ],
            check=True,
        )
    ref = torch.load(work / "reference.pt", weights_only=False)
    torch.use_deterministic_algorithms(True)
    models = {on: build_ours(ref["state_dict"], on) for on in (True, False)}
    criterion = SEEMCriterion(CriterionConfig(num_points=64), num_classes=len(CLASSES))
    print(f"{'case':<36} {'stage':<58} max difference")
    for name, images in spec["eval"].items():
        ours, theirs = our_stages(models[True], images), ref["stages"][name]
        rows = [(s, max_abs(ours[s], theirs[s])) for s in ("backbone", "pixel_decoder", "class_embeddings")]
        rows += inference_rows(ours, theirs)
        for stage, value in rows + decoder_rows(ours["decoder"], theirs["decoder"]):
            print(f"{'inference, ' + name:<36} {stage:<58} {value:.3g}")
    for name, case in spec["training"].items():
        for stage, value in training_rows(
            our_training(models[case["spatial"]], criterion, case), ref["training"][name]
        ):
            print(f"{name:<36} {stage:<58} {value:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
