"""diffsynth: annotated segmentation datasets drawn by Stable Diffusion, masks from its own attention."""

__version__ = "0.1.0"
