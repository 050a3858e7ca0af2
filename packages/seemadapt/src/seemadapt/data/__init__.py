"""Data layer: sources and converters, mixing, Detectron2 registration, SEEM mappers.

The contract names (``validate``, ``Category``, ``contract_features``, ``make_row``, ...) are :mod:`segcontract`'s,
re-exported here.

Typical use::

    from seemadapt.data import register, SEEMTrainMapper, build_train_loader, spec_of, ensure_registered

    name = register([real_ds, "me/wet-damage-synthetic"], "wet_train")   # any sources, mixed by class name
    mapper = SEEMTrainMapper.from_dataset(name, image_size=256, seed=0)
    loader = build_train_loader(name, mapper, total_batch_size=8, num_workers=2)
    batch = next(iter(loader))        # list of 8 dicts: image, instances, sem_seg, groundings, class_names ...

    # in a spawned worker: ensure_registered(spec) with spec = spec_of(name) sent from the main process
"""

from seemadapt.data.cache import default_cache_dir
from seemadapt.data.coco_panoptic import from_coco_panoptic
from seemadapt.data.mapper import (
    EpochDataset,
    EpochSampler,
    SEEMTestMapper,
    SEEMTrainMapper,
    build_train_loader,
    trivial_batch_collator,
)
from seemadapt.data.masks_folder import from_masks
from seemadapt.data.mixing import align_categories
from seemadapt.data.register import (
    DatasetSpec,
    dataset_names,
    ensure_registered,
    load_records,
    register,
    spec_of,
    unregister,
)
from seemadapt.data.sources import load_source, mix
from segcontract import (
    IGNORE_LABEL,
    Category,
    ContractError,
    attach_categories,
    class_names_of,
    contract_features,
    id2rgb,
    make_row,
    read_categories,
    rgb2id,
    validate,
)

__all__ = [
    "IGNORE_LABEL",
    "Category",
    "ContractError",
    "DatasetSpec",
    "EpochDataset",
    "EpochSampler",
    "SEEMTestMapper",
    "SEEMTrainMapper",
    "align_categories",
    "attach_categories",
    "build_train_loader",
    "class_names_of",
    "contract_features",
    "dataset_names",
    "default_cache_dir",
    "ensure_registered",
    "from_coco_panoptic",
    "from_masks",
    "id2rgb",
    "load_records",
    "load_source",
    "make_row",
    "mix",
    "read_categories",
    "register",
    "rgb2id",
    "spec_of",
    "trivial_batch_collator",
    "unregister",
    "validate",
]
