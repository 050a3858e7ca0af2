"""SEEM v1 in clean PyTorch: configs, parts, the assembled model, its predictor, checkpoints and post-processing.

>>> from seemadapt.model import SEEM
>>> model = SEEM.from_pretrained("xdecoder/SEEM:seem_focalt_v1.pt")        # doctest: +SKIP
>>> model.predict(image, ["mold", "stain", "wall"], task="semantic")        # doctest: +SKIP
"""

from seemadapt.model.backbone import FocalNet
from seemadapt.model.checkpoint import (
    CheckpointError,
    LoadReport,
    UntrustedCheckpointError,
    infer_config,
    load_state_dict_into,
    read_state_dict,
)
from seemadapt.model.config import (
    BackboneConfig,
    DecoderConfig,
    LanguageConfig,
    PixelDecoderConfig,
    SEEMConfig,
    focall_config,
    focalt_config,
    get_config,
    tiny_config,
)
from seemadapt.model.convert import convert_checkpoint
from seemadapt.model.decoder import SEEMDecoder
from seemadapt.model.images import ImageBatch
from seemadapt.model.language import LanguageEncoder
from seemadapt.model.pixel_decoder import TransformerEncoderPixelDecoder
from seemadapt.model.postprocess import (
    MaskStats,
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
    sigmoid_with_mask_stats,
)
from seemadapt.model.predictor import SEEMPredictor
from seemadapt.model.seem import SEEM, GroundingPrompts, SEEMHead
from seemadapt.model.tokenizer import SEEMTokenizer

__all__ = [
    "SEEM",
    "BackboneConfig",
    "CheckpointError",
    "DecoderConfig",
    "FocalNet",
    "GroundingPrompts",
    "ImageBatch",
    "LanguageConfig",
    "LanguageEncoder",
    "LoadReport",
    "MaskStats",
    "PixelDecoderConfig",
    "SEEMConfig",
    "SEEMDecoder",
    "SEEMHead",
    "SEEMPredictor",
    "SEEMTokenizer",
    "TransformerEncoderPixelDecoder",
    "UntrustedCheckpointError",
    "convert_checkpoint",
    "focall_config",
    "focalt_config",
    "get_config",
    "infer_config",
    "instance_inference",
    "load_state_dict_into",
    "panoptic_inference",
    "read_state_dict",
    "resize_mask_logits",
    "semantic_inference",
    "sigmoid_with_mask_stats",
    "tiny_config",
]
