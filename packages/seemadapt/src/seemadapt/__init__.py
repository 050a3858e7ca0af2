"""seemadapt: fine-tune SEEM with light adapters on datasets that follow the diffsynth contract."""

__version__ = "0.1.0"
