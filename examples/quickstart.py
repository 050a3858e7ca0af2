"""The main job, offline, on the built-in tiny models (about 1 minute on 2 CPU cores; 2-3 on the first run).

    uv run python examples/quickstart.py [--output outputs/quickstart] [--fast]

1. diffsynth draws a small annotated dataset with Stable Diffusion's own attention (text-to-image), then more
   images that start from "domain photos" (image-to-image, strength 0.4);
2. the dataset is exported to the COCO-panoptic layout and registered with Detectron2, next to a "real" domain:
   procedural toy scenes of the same classes (seemadapt.toyworld), split into training and held-out images;
3. seemadapt fine-tunes a pretrained SEEM-tiny (seemadapt.pretrained_tiny: the tiny preset trained for about a
   minute on toy scenes of *other* classes, built once and cached) with the default strategy (adapters in the
   backbone, fully trained head) on the synthetic and the real training images;
4. the held-out real images are scored before and after fine-tuning (mIoU, pixel accuracy, PQ, side by side), one
   panoptic prediction is shown, and the adapters are saved with a report (metrics table, plots, overlays).

The tiny text-to-image model draws noise: here the synthetic images only exercise the pipeline, the toy "real"
scenes carry what is learnt. For the same flow with real models see examples/real_models.py.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny models need no download

CLASSES = ["mold", "stain", "pipe"]
SHOWN = ("miou", "pixel_accuracy", "pq", "pq_things", "pq_stuff")


def side_by_side(before: dict, after: dict) -> str:
    rows = [f"{'metric':16s} {'before':>8s} {'after':>8s}"]
    rows += [f"{key:16s} {before.get(key, 0.0):8.3f} {after.get(key, 0.0):8.3f}" for key in SHOWN]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="outputs/quickstart", help="where everything is written")
    parser.add_argument("--fast", action="store_true", help="fewer images and steps (CI smoke run)")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    import diffsynth
    import seemadapt
    from seemadapt.pretrained_tiny import pretrained_tiny
    from seemadapt.toyworld import make_toy_scenes

    n_txt, n_img = (4, 2) if args.fast else (12, 6)
    steps = 4 if args.fast else 10

    # 1. Generate: text-to-image, then image-to-image from "domain photos" (here: the first drawn images).
    print("== 1. generating", n_txt + n_img, "images")
    txt = diffsynth.generate(CLASSES, num_images=n_txt, model="tiny", num_inference_steps=steps, seed=0)
    domain_photos = [row["image"] for row in txt.select(range(min(3, n_txt)))]
    img = diffsynth.generate(
        CLASSES,
        num_images=n_img,
        model="tiny",
        init_images=domain_photos,
        strength=0.4,
        num_inference_steps=steps * 2,
        seed=1,
    )

    # 2. Export the text-to-image set to COCO panoptic (the standard layout, readable by detectron2 and
    #    panopticapi), then mix it with the image-to-image set and the real training scenes: seemadapt aligns
    #    categories by name.
    print("== 2. exporting, mixing and registering")
    export = diffsynth.export_coco(txt, out / "export", overwrite=True)
    diffsynth.preview_grid(txt, n=4).save(out / "preview.png")
    real_classes = [*CLASSES, "background"]  # the toy wall plays diffsynth's stuff class "background"
    real_train = make_toy_scenes(32, classes=real_classes, stuff=["background"], seed=1)
    real_eval = make_toy_scenes(8 if args.fast else 16, classes=real_classes, stuff=["background"], seed=2)
    train = seemadapt.load([export, img, real_train])  # any contract sources: Dataset, folder, Hub id, a list
    name = seemadapt.register(train, "quickstart_train", cache_dir=str(out / "cache"), overwrite=True)
    print(
        f"registered {name!r} with detectron2: {len(train)} train images, {len(real_eval)} held-out real images"
    )

    # 3. Fine-tune the pretrained SEEM-tiny with the default strategy (adapter-backbone/full-head).
    print("== 3. fine-tuning SEEM-tiny (pretrained on toy scenes of other classes; built once, then cached)")
    model = pretrained_tiny()
    before = seemadapt.evaluate(model, real_eval, batch_size=4, progress=False)
    (out / "before.json").write_text(json.dumps(before.metrics, indent=1))
    run = seemadapt.finetune(
        train,
        model=model,
        strategy="adapter-backbone/full-head",
        max_steps=100 if args.fast else 200,
        batch_size=4,
        image_size=96,
        lr=3e-4,  # a short run: 3x the full-head default (docs/adapters.md, "Learning rate per strategy")
        eval_every=0,
        save_every=0,  # only the final adapters: checkpoints every epoch would cost more than the training
        num_workers=0,
        progress=False,
        tracker=None,
        output_dir=str(out / "run"),
    )

    # 4. Evaluate on the held-out real scenes, show one panoptic prediction, save adapters + report.
    print("== 4. evaluating and saving")
    result = seemadapt.evaluate(run.model, real_eval, batch_size=4)
    result.save(out / "report")
    run.save(out / "adapters")
    print(result.table())
    print(
        "\nheld-out real scenes, before vs after fine-tuning:\n"
        + side_by_side(before.metrics, result.metrics)
    )
    panoptic = run.model.predict(
        real_eval[0]["image"], run.classes, task="panoptic", thing_classes=run.thing_classes
    )
    found = [f"{run.classes[s['category_id']]} ({s['score']:.2f})" for s in panoptic["segments_info"]]
    print(f"panoptic segments in the first held-out image: {', '.join(found) or 'none'}")
    print(f"\nadapters: {out / 'adapters'}\nreport:   {out / 'report'} and {run.report_dir}")
    print(f"wall time: {time.perf_counter() - start:.0f} s")
    return out


if __name__ == "__main__":
    main()
