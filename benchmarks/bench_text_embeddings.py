"""Evaluation class embeddings of SEEM's full-size text encoder: official-style versus trimmed, batched, cached.

134 classes (133 COCO-panoptic-like names + "background") x 81 templates = 10,854 prompts, random weights:

(a) naive: one batch of 81 prompts per class, every prompt run over all 77 positions (the official loop);
(b) trimmed + batched: prompts of all classes sorted by length, each batch run only up to its longest prompt;
(c) a second call with the same class list (served from the cache).

(a) is timed in rounds of a few classes that alternate with (b) on the same classes, so that the ratio holds on a
busy machine whose load drifts over minutes.

Run: ``uv run python benchmarks/bench_text_embeddings.py [--threads 2] [--naive-classes N]``. With
``--naive-classes N`` the naive path is timed on the first N classes and scaled to all of them (it is linear in the
number of classes); its embeddings are still compared with (b) on those N classes.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from seemadapt.model.config import LanguageConfig
from seemadapt.model.language import LanguageEncoder
from seemadapt.model.templates import all_templates, with_background

THINGS = """person bicycle car motorcycle airplane bus train truck boat traffic-light fire-hydrant stop-sign
parking-meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase
frisbee skis snowboard sports-ball kite baseball-bat baseball-glove skateboard surfboard tennis-racket bottle
wine-glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot-dog pizza donut cake chair couch
potted-plant bed dining-table toilet tv laptop mouse remote keyboard cell-phone microwave oven toaster sink
refrigerator book clock vase scissors teddy-bear hair-drier toothbrush"""
STUFF = """banner blanket bridge cardboard counter curtain door-stuff floor-wood flower fruit gravel house light
mirror-stuff net pillow platform playingfield railroad river road roof sand sea shelf snow stairs tent towel
wall-brick wall-stone wall-tile wall-wood water-other window-blind window-other tree-merged fence-merged
ceiling-merged sky-other-merged cabinet-merged table-merged floor-other-merged pavement-merged mountain-merged
grass-merged dirt-merged paper-merged food-other-merged building-other-merged rock-merged wall-other-merged
rug-merged"""
KEEP_HYPHEN = ("-stuff", "-merged", "-other", "wall-", "floor-", "window-", "water-")


def class_names() -> list[str]:
    """133 names; hyphens inside multi-word thing names stand for spaces."""
    names = []
    for word in (THINGS + " " + STUFF).split():
        names.append(word if any(tag in word for tag in KEEP_HYPHEN) else word.replace("-", " "))
    return names


def naive_embeddings(encoder: LanguageEncoder, names: list[str]) -> torch.Tensor:
    """The official evaluation loop: per class, 81 prompts padded to 77 tokens, all positions computed."""
    rows = []
    for name in names:
        ids = encoder.tokenizer(all_templates(name), padding="max_length").input_ids
        mean = encoder.encode_ids(ids, normalize=True, trim=False).mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--naive-classes", type=int, default=0, help="time (a) on this many classes (0 = all)"
    )
    parser.add_argument("--round-classes", type=int, default=8, help="classes per alternating (a)/(b) round")
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    encoder = LanguageEncoder(LanguageConfig(), batch_size=args.batch_size).requires_grad_(False)
    encoder.tokenizer("warm up")  # builds the offline tokenizer outside the timings
    names = class_names()
    everyone = with_background(names)
    print(f"{len(everyone)} classes x 81 templates = {len(everyone) * 81} prompts; {args.threads} threads")

    start = time.perf_counter()
    fast = encoder.class_embeddings(names, mode="eval")
    time_b = time.perf_counter() - start

    start = time.perf_counter()
    cached = encoder.class_embeddings(names, mode="eval")
    time_c = time.perf_counter() - start
    assert cached is fast

    # (a) in rounds of a few classes, each round also re-timing (b) on the same classes with an empty cache: on a
    # shared machine the load changes over minutes, and alternating keeps both sides under the same load.
    subset = everyone if args.naive_classes <= 0 else everyone[: args.naive_classes]
    naive_rows, time_a, time_b_paired = [], 0.0, 0.0
    with torch.no_grad():
        for first in range(0, len(subset), args.round_classes):
            part = subset[first : first + args.round_classes]
            start = time.perf_counter()
            naive_rows.append(naive_embeddings(encoder, part))
            time_a += time.perf_counter() - start
            encoder.clear_cache()
            start = time.perf_counter()
            encoder.class_embeddings(part, mode="eval", add_background=False)
            time_b_paired += time.perf_counter() - start
    naive = torch.cat(naive_rows)
    error = (naive - fast[: len(subset)]).abs().max().item()
    encoder.class_embeddings(names, mode="eval")  # refill the cache for the training steps

    rng = random.Random(0)
    steps = 100
    start = time.perf_counter()
    for _ in range(steps):
        encoder.class_embeddings(names, mode="train", rng=rng)
    time_train = (time.perf_counter() - start) / steps

    scale = len(everyone) / len(subset)
    scaled = "" if len(subset) == len(everyone) else f", timed on {len(subset)} classes and scaled"
    print(f"(a) naive, 77 positions, per class  : {time_a * scale:8.2f} s{scaled}")
    print(f"(b) trimmed + batched, one call     : {time_b:8.2f} s")
    print(f"(c) second call, cached             : {time_c * 1e3:8.3f} ms")
    print(
        f"    train step from the cache       : {time_train * 1e3:8.3f} ms per call ({len(everyone)} classes)"
    )
    print(f"(a) / (b) in one call               : {time_a * scale / time_b:8.1f}x")
    print(
        f"(a) / (b) alternating rounds        : {time_a / time_b_paired:8.1f}x  (same classes, same load; "
        f"(b) took {time_b_paired * scale:.2f} s scaled)"
    )
    print(f"max |(a) - (b)| = {error:.2e}  (allclose atol 1e-6: {error <= 1e-6})")


if __name__ == "__main__":
    main()
