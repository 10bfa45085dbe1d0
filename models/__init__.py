"""imgverify detectors: plain PyTorch / numpy classes, no Ray.

Each import below registers one detector module (see ``models/registry.py``).
"""

from models import (
    clip_b16,  # noqa: F401  (registers clip_b16)
    clip_detector,  # noqa: F401  (registers clip_h14, clip_bigg, clip_probe_{ufd,cues,rine})
    debug,  # noqa: F401  (registers debug_mean, debug_sleep, debug_fail)
    dino,  # noqa: F401  (registers dino)
    effnet_artifact,  # noqa: F401  (registers effnet_artifact)
    fatformer,  # noqa: F401  (registers fatformer)
    forensics,  # noqa: F401  (registers forensics)
    ghostnet,  # noqa: F401  (registers ghostnet)
    mantranet,  # noqa: F401  (registers mantranet)
    provenance,  # noqa: F401  (registers provenance)
)
from models.registry import create_detector, feature_schema, get_detector_class, list_detectors, register_detector

__all__ = ["create_detector", "feature_schema", "get_detector_class", "list_detectors", "register_detector"]
