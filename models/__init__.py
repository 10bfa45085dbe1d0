"""imgverify detectors: plain PyTorch / numpy classes, no Ray.

Importing this package loads no detector: the feature schema is data (``models/schema.py``), and a detector's
module (with torch, OpenCV ...) is imported on the first ``get_detector_class`` / ``create_detector`` of one
of its names (see ``models/registry.py``).
"""

from models.registry import (
    create_detector,
    feature_schema,
    get_detector_class,
    has_artifacts,
    list_detectors,
    register_detector,
)

__all__ = [
    "create_detector",
    "feature_schema",
    "get_detector_class",
    "has_artifacts",
    "list_detectors",
    "register_detector",
]
