"""segreview: a local web app to look at every synthetic sample before training on it, and to try the model.

``segreview DATASET`` serves two tabs on localhost: *Dataset review* (page through a contract dataset with its
overlays, attention maps, prompt, quality and grounding; filter and sort; reject samples and save the kept subset
as a new dataset) and *Model try-out* (SEEM or ``tiny``, with adapters, on an uploaded image). The logic lives in
plain classes (:class:`ReviewSession`, :class:`TryOut`) that work without the web UI (the ``app`` extra).
"""

from __future__ import annotations

from segreview.paths import Roots
from segreview.review import SORTS, ReviewSession
from segreview.source import open_dataset

__version__ = "0.1.0"

__all__ = ["SORTS", "ReviewSession", "Roots", "__version__", "open_dataset"]
