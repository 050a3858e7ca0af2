"""The main job with real models, for a GPU machine with internet access (same flow as quickstart.py).

    accelerate launch examples/real_models.py --real-train data/real_train --real-eval data/real_val \
        --domain-photos data/domain_photos --classes "light mold" "dark mold" stain pipe

Stable Diffusion 1.5 (the community mirror of runwayml's weights) draws the synthetic images, in the domain of your
photos (image-to-image, strength 0.4) and from text; SEEM Focal-T v1 is fine-tuned on real + synthetic data with
adapters in the backbone and a fully trained head, then evaluated on your real validation images.
Real data can be a COCO-panoptic folder, image + mask folders (convert with seemadapt.data.from_masks), a saved
dataset or a Hub dataset id.
"""

from __future__ import annotations

import argparse

SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SEEM_MODEL = "xdecoder/SEEM:seem_focalt_v1.pt"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", nargs="+", required=True)
    parser.add_argument("--real-train", required=True, help="real training data (any contract source)")
    parser.add_argument("--real-eval", required=True, help="real validation data (any contract source)")
    parser.add_argument("--domain-photos", help="folder of domain photos for image-to-image")
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--output", default="outputs/real")
    parser.add_argument("--push-dataset", help="Hub repo id for the synthetic dataset")
    parser.add_argument("--push-adapters", help="Hub repo id for the adapters")
    args = parser.parse_args()

    import diffsynth
    import seemadapt

    synthetic = diffsynth.generate(
        args.classes,
        num_images=args.num_images,
        model=SD_MODEL,
        init_images=args.domain_photos,  # None: text-to-image only
        strength=0.4,
        torch_dtype="float16",
        device="cuda",  # or leave it out under `accelerate launch`: one GPU per process
        num_inference_steps=50,
        batch_size=4,
        output_dir=f"{args.output}/synthetic",  # resumable parquet shards
    )
    if synthetic is None:  # a non-main process of a multi-process run
        return
    if args.push_dataset:
        diffsynth.push_to_hub(synthetic, args.push_dataset, private=True)

    run = seemadapt.finetune(
        train=[args.real_train, synthetic],
        eval=args.real_eval,
        model=SEEM_MODEL,
        strategy="adapter-backbone/full-head",
        epochs=30,
        batch_size=4,
        image_size=256,
        output_dir=f"{args.output}/run",
    )
    print(run.metrics)
    run.save(f"{args.output}/adapters")
    if args.push_adapters:
        run.push_to_hub(args.push_adapters, private=True)


if __name__ == "__main__":
    main()
