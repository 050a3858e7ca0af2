"""segcontract: the dataset contract shared by diffsynth (which writes it) and seemadapt (which reads it).

One row per image with an RGB ``image``, a COCO-panoptic ``panoptic`` PNG and its ``segments_info``, a ``semantic``
PNG (class index, 255 = ignore), referring ``grounding`` sentences, and ``prompt``/``seed``/``source``. The
``ClassLabel`` names of ``segments_info.category_id`` are the class list. This package states it once, as code::

    from segcontract import contract_features, make_row, validate

    features = contract_features(["polyp", "background"])
    categories = validate(dataset)          # ContractError names the row, the column and the fix
"""

from segcontract.categories import (
    attach_categories,
    class_names_of,
    find_categories_in_json,
    parse_categories,
    read_categories,
)
from segcontract.category import Category
from segcontract.category_files import category_files, write_category_files
from segcontract.clip_bpe import CLIP_VOCAB_SIZE, bytes_to_unicode, default_bpe_path, load_clip_bpe
from segcontract.colors import check_color, default_color
from segcontract.columns import (
    COLUMNS,
    GROUNDING_KEYS,
    IGNORE_LABEL,
    IMAGE_COLUMNS,
    MAX_SEGMENT_ID,
    REQUIRED_COLUMNS,
    SEGMENT_KEYS,
    SOURCES,
    VOID,
)
from segcontract.errors import ContractError, HubAccessError, OutputPathError
from segcontract.features import contract_features, segment_feature
from segcontract.hub_access import HUB_REPO_ID, check_hub_write, hub_errors
from segcontract.output_paths import check_output_dir, output_write_error
from segcontract.overlay import blend_regions, outline
from segcontract.panoptic import id2rgb, rgb2id, segment_geometry
from segcontract.row_check import DecodedRow, check_fields, decode_image, decode_row, row_label
from segcontract.rows import iter_raw_rows, make_row, png_bytes
from segcontract.schema_check import check_features
from segcontract.segments import CONNECTIVITY, Region, label_map_regions
from segcontract.validate import UniqueRows, validate

__version__ = "0.1.0"

__all__ = [
    "CLIP_VOCAB_SIZE",
    "COLUMNS",
    "CONNECTIVITY",
    "GROUNDING_KEYS",
    "HUB_REPO_ID",
    "IGNORE_LABEL",
    "IMAGE_COLUMNS",
    "MAX_SEGMENT_ID",
    "REQUIRED_COLUMNS",
    "SEGMENT_KEYS",
    "SOURCES",
    "VOID",
    "Category",
    "ContractError",
    "DecodedRow",
    "HubAccessError",
    "OutputPathError",
    "Region",
    "UniqueRows",
    "attach_categories",
    "blend_regions",
    "bytes_to_unicode",
    "category_files",
    "check_color",
    "check_features",
    "check_fields",
    "check_hub_write",
    "check_output_dir",
    "class_names_of",
    "contract_features",
    "decode_image",
    "decode_row",
    "default_bpe_path",
    "default_color",
    "find_categories_in_json",
    "hub_errors",
    "id2rgb",
    "iter_raw_rows",
    "label_map_regions",
    "load_clip_bpe",
    "make_row",
    "outline",
    "output_write_error",
    "parse_categories",
    "png_bytes",
    "read_categories",
    "rgb2id",
    "row_label",
    "segment_feature",
    "segment_geometry",
    "validate",
    "write_category_files",
]
