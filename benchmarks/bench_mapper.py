"""Throughput of the SEEM training mapper through detectron2's train loader (images/s), side by side.

Registers a synthetic contract dataset of 640x480 JPEG images (shapes, panoptic, semantic, grounding), then runs
``build_train_loader`` (detectron2's loader with epoch-carrying indices) with ``SEEMTrainMapper`` at 256 and 512 px,
with 0, 1 and 2 DataLoader workers, and prints a table. The first batch (worker start-up) is not timed.

    uv run python benchmarks/bench_mapper.py [--images 32] [--batches 12] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import tempfile
import time

import datasets
from PIL import Image

from seemadapt.data import SEEMTrainMapper, build_train_loader, register, unregister
from seemadapt.testing import make_contract_dataset
from segcontract import iter_raw_rows


def _jpeg_dataset(num_images: int) -> datasets.Dataset:
    ds = make_contract_dataset(num_images=num_images, size=(640, 480), seed=0, max_shapes=4)
    rows = []
    for _, row in iter_raw_rows(ds):
        buf = io.BytesIO()
        Image.open(io.BytesIO(row["image"]["bytes"])).save(buf, format="JPEG", quality=90)
        row["image"] = {"bytes": buf.getvalue(), "path": None}
        rows.append(row)
    return datasets.Dataset.from_list(rows, features=ds.features, info=ds.info)


def _throughput(name: str, size: int, workers: int, batches: int, batch_size: int) -> float:
    mapper = SEEMTrainMapper.from_dataset(name, image_size=size, seed=0)
    loader = iter(build_train_loader(name, mapper, total_batch_size=batch_size, num_workers=workers))
    next(loader)  # start-up
    start = time.perf_counter()
    count = sum(len(batch) for batch in itertools.islice(loader, batches))
    elapsed = time.perf_counter() - start
    del loader
    return count / elapsed


def _mapper_only(name: str, size: int, count: int) -> float:
    from seemadapt.detectron2_compat import DatasetCatalog

    records = DatasetCatalog.get(name)
    mapper = SEEMTrainMapper.from_dataset(name, image_size=size, seed=0)
    mapper(records[0])
    start = time.perf_counter()
    for i in range(count):
        mapper(records[i % len(records)], epoch=i // len(records))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        data = _jpeg_dataset(args.images)
        t0 = time.perf_counter()
        name = register(data, "bench_mapper", cache_dir=cache)
        print(
            f"register(): {args.images} images of 640x480 validated and written in {time.perf_counter() - t0:.2f} s"
        )
        print(f"cpu cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f}")
        print(f"\n{'size':>6} | {'loader workers':>14} | {'images/s':>9}")
        print("-" * 37)
        try:
            for size in (256, 512):
                rate = _mapper_only(name, size, args.batches * args.batch_size)
                print(f"{size:>6} | {'mapper only':>14} | {rate:>9.1f}")
                for workers in (0, 1, 2):
                    rate = _throughput(name, size, workers, args.batches, args.batch_size)
                    print(f"{size:>6} | {workers:>14} | {rate:>9.1f}")
        finally:
            unregister(name)
        print(f"\nload average after: {os.getloadavg()[0]:.1f} (other processes share these cores)")


if __name__ == "__main__":
    main()
