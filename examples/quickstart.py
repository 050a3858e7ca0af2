"""The main job, offline, on the built-in tiny models (a few minutes on 2 CPU cores).

    uv run python examples/quickstart.py [--output outputs/quickstart] [--fast]

1. diffsynth draws a small annotated dataset with Stable Diffusion's own attention (text-to-image), then more
   images that start from "domain photos" (image-to-image, strength 0.4);
2. the dataset is exported to the COCO-panoptic layout and registered with Detectron2;
3. seemadapt fine-tunes SEEM-tiny with the default strategy (adapters in the backbone, fully trained head);
4. the adapters are evaluated (mIoU, precision, recall, PQ) and saved with a report (metrics table, plots,
   prediction overlays).

Tiny random-weight models show the mechanics, not quality: the images are noise and the numbers mean nothing.
For the same flow with real models see examples/real_models.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny models need no download


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", default="outputs/quickstart", help="where everything is written")
    parser.add_argument("--fast", action="store_true", help="fewer images and steps (CI smoke run)")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    import diffsynth
    import seemadapt

    classes = ["mold", "stain", "pipe"]
    n_txt, n_img = (6, 3) if args.fast else (24, 8)
    steps = 4 if args.fast else 10

    # 1. Generate: text-to-image, then image-to-image from "domain photos" (here: the first drawn images).
    print("== 1. generating", n_txt + n_img, "images")
    txt = diffsynth.generate(classes, num_images=n_txt, model="tiny", num_inference_steps=steps, seed=0)
    domain_photos = [row["image"] for row in txt.select(range(min(3, n_txt)))]
    img = diffsynth.generate(
        classes,
        num_images=n_img,
        model="tiny",
        init_images=domain_photos,
        strength=0.4,
        num_inference_steps=steps * 2,
        seed=1,
    )

    # 2. Export the text-to-image set to COCO panoptic (the standard layout, readable by detectron2 and
    #    panopticapi), then mix it back with the image-to-image set: seemadapt aligns categories by name.
    print("== 2. exporting, mixing and registering")
    export = diffsynth.export_coco(txt, out / "export", overwrite=True)
    diffsynth.preview_grid(txt, n=6).save(out / "preview.png")
    data = seemadapt.load([export, img])  # any contract sources: Dataset, folder, Hub id, or a list to mix
    split = data.train_test_split(test_size=0.25, seed=0)
    name = seemadapt.register(
        split["train"], "quickstart_train", cache_dir=str(out / "cache"), overwrite=True
    )
    print(
        f"registered {name!r} with detectron2: {len(split['train'])} train / {len(split['test'])} eval images"
    )

    # 3. Fine-tune SEEM-tiny with the default strategy (adapter-backbone/full-head).
    print("== 3. fine-tuning SEEM-tiny")
    run = seemadapt.finetune(
        split["train"],
        eval=split["test"],
        model="tiny",
        strategy="adapter-backbone/full-head",
        max_steps=8 if args.fast else 60,
        batch_size=2,
        image_size=128,
        eval_every=None,
        num_workers=0,
        output_dir=str(out / "run"),
    )

    # 4. Evaluate on its own and save adapters + report.
    print("== 4. evaluating and saving")
    result = seemadapt.evaluate(run.model, split["test"], batch_size=2)
    result.save(out / "report")
    run.save(out / "adapters")
    print(result.table())
    print(f"\nadapters: {out / 'adapters'}\nreport:   {out / 'report'} and {run.report_dir}")
    return out


if __name__ == "__main__":
    main()
