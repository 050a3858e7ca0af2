"""Reference half of :mod:`seem_parity`: runs the ORIGINAL SEEM v1 code and saves what it computes.

Runs in the original code's environment (its old pins: detectron2 0.6, transformers 4.34, kornia, numpy < 2; see
``tools/README.md``), never in the project's. Nothing of the original repository is copied: it is imported from
``--seem-ref`` (upstream commit 7b2e76d), and what cannot run on a CPU-only machine without the hub is neutralised at
run time (:func:`install_shims`). Reads ``inputs.pt`` written by ``seem_parity.py`` and writes ``reference.pt``::

    python tools/seem_parity_ref.py --seem-ref /path/to/seem --work DIR
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib
import importlib.util
import json
import random
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# The tiny geometry both sides build (dotted keys over configs/seem/focalt_unicl_lang_v1.yaml).
TINY = {
    "MODEL.BACKBONE.FOCAL.EMBED_DIM": 16,
    "MODEL.BACKBONE.FOCAL.DEPTHS": [1, 1, 1, 1],
    "MODEL.BACKBONE.FOCAL.FOCAL_LEVELS": [2, 2, 2, 2],
    "MODEL.BACKBONE.FOCAL.FOCAL_WINDOWS": [3, 3, 3, 3],
    "MODEL.BACKBONE.FOCAL.DROP_PATH_RATE": 0.0,
    "MODEL.ENCODER.CONVS_DIM": 64,
    "MODEL.ENCODER.MASK_DIM": 64,
    "MODEL.ENCODER.TRANSFORMER_ENC_LAYERS": 1,
    "MODEL.DECODER.HIDDEN_DIM": 64,
    "MODEL.DIM_PROJ": 64,
    "MODEL.DECODER.NHEADS": 4,
    "MODEL.DECODER.DIM_FEEDFORWARD": 128,
    "MODEL.DECODER.DEC_LAYERS": 4,
    "MODEL.DECODER.NUM_OBJECT_QUERIES": 8,
    "MODEL.DECODER.MAX_SPATIAL_LEN": [16, 16, 16, 16],
    "MODEL.DECODER.TRAIN_NUM_POINTS": 64,
    "MODEL.DECODER.SPATIAL.MAX_ITER": 1,
    "MODEL.TEXT.WIDTH": 64,
    "MODEL.TEXT.HEADS": 4,
    "MODEL.TEXT.LAYERS": 2,
    "MODEL.TEXT.CONTEXT_LENGTH": 16,
    "ATTENTION_ARCH.SPATIAL_MEMORIES": 4,
    "ATTENTION_ARCH.QUERY_NUMBER": 2,
    "TEST.DETECTIONS_PER_IMAGE": 10,
}


def install_shims(root: Path) -> None:
    """Let detectron2 0.6 and the SEEM code import and run on a CPU with current Pillow/NumPy and no hub."""
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR  # removed in Pillow 10, a default argument in detectron2 0.6
    for name, kind in (("int", int), ("float", float), ("bool", bool), ("str", str), ("object", object)):
        if name not in np.__dict__:
            setattr(np, name, kind)  # aliases removed in NumPy 1.24, used by detectron2 0.6 and SEEM
    try:
        importlib.import_module("detectron2._C")
    except ImportError:
        sys.modules["detectron2._C"] = types.ModuleType("detectron2._C")  # never called on SEEM's path
    if importlib.util.find_spec("mpi4py") is None:
        stub = types.ModuleType("mpi4py")
        stub.MPI = types.SimpleNamespace(COMM_WORLD=None)
        sys.modules["mpi4py"] = stub
    sys.path.insert(0, str(root))
    torch.Tensor.cuda = lambda self, *a, **k: self  # the code moves token tensors with .cuda()
    nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.current_device = lambda: "cpu"


def clip_tokenizer_folder(out: Path) -> str:
    """A Hugging Face CLIP tokenizer folder (vocab.json, merges.txt) built from CLIP's BPE merges file."""
    if (out / "vocab.json").is_file():
        return str(out)
    spec = importlib.util.find_spec("open_clip")
    bpe = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:48895]]  # CLIP's vocabulary uses the first 48894 merges
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special))
    config = dict(special, model_max_length=77, do_lower_case=True, tokenizer_class="CLIPTokenizer")
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return str(out)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(root: Path, work: Path, classes: list[str], things: list[str], spatial: bool) -> nn.Module:
    from modeling import build_model
    from utils.arguments import load_config_dict_to_opt, load_opt_from_config_files

    opt = load_opt_from_config_files([str(root / "configs/seem/focalt_unicl_lang_v1.yaml")])
    changes = dict(
        TINY,
        **{
            "MODEL.ENCODER.NUM_CLASSES": len(classes),
            "VERBOSE": False,
            "MODEL.TEXT.PRETRAINED_TOKENIZER": clip_tokenizer_folder(work / "clip_tokenizer"),
        },
    )
    if not spatial:
        changes["MODEL.DECODER.SPATIAL.ENABLED"] = False
    load_config_dict_to_opt(opt, copy.deepcopy(changes))
    opt["device"] = torch.device("cpu")
    seed_all(0)
    model = build_model(opt)
    model.train_class_names = [*classes, "background"]
    ids = {i: i for i, c in enumerate(classes) if c in things}
    model.metadata = types.SimpleNamespace(thing_dataset_id_to_contiguous_id=ids)

    def extra_hook(_module, _args, kwargs):  # spatial-off training reads a key only the spatial branch sets
        if isinstance(kwargs.get("extra"), dict) and kwargs.get("task") == "seg":
            kwargs["extra"].setdefault("false_positive_mask", None)

    model.sem_seg_head.predictor.register_forward_pre_hook(extra_hook, with_kwargs=True)
    return model.eval()


def as_batch(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The dataset mapper's output format from plain tensors."""
    from detectron2.structures import BitMasks, Instances

    batch = []
    for record in images:
        h, w = record["image"].shape[-2:]
        inst = Instances((h, w))
        inst.gt_classes = record["labels"]
        inst.is_things = record["is_things"]
        inst.gt_masks = BitMasks(record["masks"])
        inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
        g = record["grounding"]
        batch.append(
            {
                "image": record["image"],
                "height": h,
                "width": w,
                "instances": inst,
                "groundings": {
                    "masks": g["masks"],
                    "texts": list(g["texts"]),
                    "mode": g["mode"],
                    "hash": np.array(g["hash"], dtype=np.int64),
                },
                "spatial_query": {
                    "gt_masks": record["spatial_gt"],
                    "rand_shape": record["spatial_shape"],
                    "types": ["point"],
                },
            }
        )
    return batch


def stages(model: nn.Module, images: list[torch.Tensor], classes: list[str]) -> dict[str, Any]:
    """Backbone, pixel decoder, eval class embeddings and decoder outputs of the ``evaluate`` path."""
    from detectron2.structures import ImageList

    out: dict[str, Any] = {}
    with torch.no_grad():
        norm = [(x.float() - model.pixel_mean) / model.pixel_std for x in images]
        tensor = ImageList.from_tensors(norm, model.size_divisibility).tensor
        features = model.backbone(tensor)
        out["backbone"] = {k: v.clone() for k, v in features.items()}
        mask_features, _, multi_scale = model.sem_seg_head.pixel_decoder.forward_features(features)
        out["pixel_decoder"] = {
            "mask_features": mask_features,
            **{f"level{i}": m for i, m in enumerate(multi_scale)},
        }
        lang = model.sem_seg_head.predictor.lang_encoder
        lang.get_text_embeddings([*classes, "background"], is_eval=True)
        out["class_embeddings"] = lang.default_text_embeddings.clone()
        model.sem_seg_head.num_classes = len(classes)
        out["decoder"] = model.sem_seg_head(features)
        model.semantic_on = model.panoptic_on = model.instance_on = True
        model.object_mask_threshold = 0.0  # random weights score about 1/(K+1): let panoptic keep segments
        results = model([{"image": x} for x in images])
        out["inference"] = [
            {
                "sem_seg": r["sem_seg"],
                "panoptic": r["panoptic_seg"][0],
                "instance_scores": r["instances"].scores,
            }
            for r in results
        ]
        sentences = ["the cat on the left", "a dog", "the cat on the left"]
        grounding = {"texts": [[t] for t in sentences]}
        result = model([{"image": images[0], "groundings": grounding}], mode="grounding_refcoco")
        out["grounding"] = result[0]["grounding_mask"]
    return out


def snapshot(out: dict[str, Any]) -> dict[str, Any]:
    """The decoder's outputs as returned: the criterion later replaces ``pred_logits`` in the very same layer dicts
    by per-image grounding logits, so each layer's dict is copied when the decoder returns it."""
    return {**out, "aux_outputs": [dict(layer) for layer in out.get("aux_outputs") or []]}


def training(model: nn.Module, batch: list[dict], seed: int, rounds: int) -> dict[str, Any]:
    """``forward_seg`` + criterion with ``rounds`` no-grad click rounds; losses, matching, outputs, gradients."""
    import modeling.architectures.seem_model_v1 as arch

    calls, decoder_out = [], {}
    hooks = [
        model.criterion.matcher.register_forward_hook(
            lambda _m, args, kwargs, out: calls.append([(a.tolist(), b.tolist()) for a, b in out]),
            with_kwargs=True,
        ),
        model.sem_seg_head.predictor.register_forward_hook(
            lambda _m, _a, out: decoder_out.update(snapshot(out))
        ),
    ]
    clicks = []
    original_next = model.prepare_next_spaital_mask

    def spy(outputs, batched_inputs, *a, **k):
        new = original_next(outputs, batched_inputs, *a, **k)
        clicks.append(
            {
                "pos": [m.clone() for m in new["spatial_query_pos_mask"]],
                "neg": [m.clone() for m in new["spatial_query_neg_mask"]],
            }
        )
        return new

    model.prepare_next_spaital_mask = spy
    saved_randint = arch.random.randint
    arch.random.randint = lambda a, b: rounds  # the number of click rounds is chosen by the case
    model.zero_grad(set_to_none=True)
    model.train()
    seed_all(seed)
    try:
        losses = model(copy.deepcopy(batch))
        total = sum(losses.values())
        total.backward()
    finally:
        arch.random.randint = saved_randint
        model.prepare_next_spaital_mask = original_next
        for h in hooks:
            h.remove()
        model.eval()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {
        "losses": {k: v.detach() for k, v in losses.items()},
        "matching": calls,
        "clicks": clicks,
        "decoder": {k: v for k, v in decoder_out.items() if k != "aux_outputs" and torch.is_tensor(v)}
        | {"aux_outputs": decoder_out.get("aux_outputs")},
        "gradients": grads,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seem-ref", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    args = parser.parse_args()
    root = args.seem_ref.resolve()
    install_shims(root)
    spec = torch.load(args.work / "inputs.pt", weights_only=False)
    classes, things = spec["classes"], spec["things"]
    result: dict[str, Any] = {}
    models = {on: build(root, args.work, classes, things, spatial=on) for on in (True, False)}
    state = {k: v.clone() for k, v in models[True].state_dict().items()}
    models[False].load_state_dict(
        {k: v for k, v in state.items() if k in models[False].state_dict()}, strict=True
    )
    result["state_dict"] = state
    result["stages"] = {name: stages(models[True], imgs, classes) for name, imgs in spec["eval"].items()}
    result["training"] = {}
    for name, case in spec["training"].items():
        model = models[case["spatial"]]
        result["training"][name] = training(model, as_batch(case["images"]), case["seed"], case["rounds"])
        print(f"reference: {name} done", flush=True)
    torch.save(result, args.work / "reference.pt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
