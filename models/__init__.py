"""imgverify detectors: plain PyTorch / numpy classes, no Ray.

Each import below registers one detector module (see ``models/registry.py``).
"""

from models.registry import create_detector, feature_schema, get_detector_class, list_detectors, register_detector

from models import debug  # noqa: F401  (registers debug_mean, debug_sleep, debug_fail)
from models import provenance  # noqa: F401  (registers provenance)
from models import clip_detector  # noqa: F401  (registers clip_h14, clip_bigg, clip_probe_{ufd,cues,rine})
from models import dino  # noqa: F401  (registers dino)
from models import fatformer  # noqa: F401  (registers fatformer)
from models import forensics  # noqa: F401  (registers forensics)
from models import mantranet  # noqa: F401  (registers mantranet)
from models import ghostnet  # noqa: F401  (registers ghostnet)
from models import clip_b16  # noqa: F401  (registers clip_b16)
from models import effnet_artifact  # noqa: F401  (registers effnet_artifact)

__all__ = ["create_detector", "feature_schema", "get_detector_class", "list_detectors", "register_detector"]
