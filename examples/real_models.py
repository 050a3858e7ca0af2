"""The main job with real models, for a GPU machine with internet access (same flow as quickstart.py).

    accelerate launch examples/real_models.py --real-train data/real_train --real-eval data/real_val \
        --domain-photos data/domain_photos --classes "light mold" "dark mold" stain pipe

Stable Diffusion 1.5 (the community mirror of runwayml's weights) draws the synthetic images, in the domain of your
photos (image-to-image, strength 0.4) and from text; SEEM Focal-T v1 is fine-tuned on real + synthetic data with
adapters in the backbone and a fully trained head, then evaluated on your real validation images.
Real data can be a COCO-panoptic folder, image + mask folders (convert with seemadapt.data.from_masks), a saved
dataset or a Hub dataset id.

Under `accelerate launch --num_processes N` (or torchrun) all N processes draw the synthetic images (one GPU each)
and then all N fine-tune SEEM together with DDP; the main process saves, prints and pushes.
"""

from __future__ import annotations

import argparse

SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SEEM_MODEL = "xdecoder/SEEM:seem_focalt_v1.pt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    # Model sizes and lengths (the defaults are the real job; tests pass the tiny offline models).
    parser.add_argument("--sd-model", default=SD_MODEL)
    parser.add_argument("--seem-model", default=SEEM_MODEL)
    parser.add_argument("--dtype", default="float16", help="generation dtype (float32 on CPU)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--size", type=int, default=None, help="generated image side (default: the model's)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--image-size", type=int, default=256, help="training image side")
    parser.add_argument("--num-workers", type=int, default=2, help="data-loading workers per process")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    import torch
    from accelerate import PartialState

    import diffsynth
    import seemadapt
    from diffsynth.shards import load_shards

    # One process per GPU under `accelerate launch` / torchrun (a single process otherwise). Every process draws
    # its share of the shards on its own GPU (cuda:<local rank>, chosen by diffsynth) and then trains with DDP.
    # cpu=True on a machine without GPUs (as seemadapt's trainer does), so CPU processes form a gloo group too.
    state = PartialState(cpu=not torch.cuda.is_available())
    size = {} if args.size is None else {"height": args.size, "width": args.size}
    synthetic_dir = f"{args.output}/synthetic"
    synthetic = diffsynth.generate(
        args.classes,
        num_images=args.num_images,
        model=args.sd_model,
        init_images=args.domain_photos,  # None: text-to-image only
        strength=0.4,
        torch_dtype=args.dtype,
        num_inference_steps=args.steps,
        batch_size=4,
        output_dir=synthetic_dir,  # resumable parquet shards, shard k drawn by process k % num_processes
        progress=state.is_main_process,
        **size,
    )
    state.wait_for_everyone()  # the main process has merged the shards
    if synthetic is None:  # the other processes read the same rows (memory-mapped, the main process's cache)
        synthetic = load_shards(synthetic_dir)
    if args.push_dataset and state.is_main_process:
        diffsynth.push_to_hub(synthetic, args.push_dataset, private=True)

    run = seemadapt.finetune(  # every process: DDP, each on its share of every batch
        train=[args.real_train, synthetic],
        eval=args.real_eval,
        model=args.seem_model,
        strategy="adapter-backbone/full-head",
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=4,
        image_size=args.image_size,
        num_workers=args.num_workers,
        cache_dir=f"{args.output}/cache",  # registered datasets, materialised once per run folder
        output_dir=f"{args.output}/run",
    )
    print(
        f"process {state.process_index} of {state.num_processes}: fine-tuned {len(run.history)} logged steps"
    )
    if state.is_main_process:
        print(run.metrics)
        run.save(f"{args.output}/adapters")
        if args.push_adapters:
            run.push_to_hub(args.push_adapters, private=True)


if __name__ == "__main__":
    main()
