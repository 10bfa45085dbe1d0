"""Detector registry: names to classes, in the style of timm's ``register_model``.

Adding a detector is one module in ``models/`` with ``@register_detector`` on its class, plus one import
line in ``models/__init__.py``.
"""

from __future__ import annotations

from typing import Any

from models.base import Detector, FeatureSpec

_REGISTRY: dict[str, type[Detector]] = {}


def register_detector(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make ``cls`` creatable by its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"detector name {cls.name!r} registered twice")
    taken = {spec.name: other for other in _REGISTRY.values() if other is not cls for spec in other.features}
    for spec in cls.features:
        if spec.name in taken:
            raise ValueError(f"feature {spec.name!r} of {cls.name!r} already belongs to {taken[spec.name].name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def list_detectors() -> list[str]:
    return sorted(_REGISTRY)


def get_detector_class(name: str) -> type[Detector]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown detector {name!r}; registered: {', '.join(list_detectors())}") from None


def create_detector(name: str, config: dict[str, Any] | None = None, device: str = "cpu") -> Detector:
    """The one entry point that builds a detector (and loads its weights) from its name and config."""
    return get_detector_class(name)(config=config, device=device)


def feature_schema(detectors: list[str] | None = None) -> dict[str, FeatureSpec]:
    """Every feature of the given (default: all registered) detectors, in a stable order."""
    names = list_detectors() if detectors is None else detectors
    return {spec.name: spec for name in names for spec in get_detector_class(name).features}


def feature_owner(feature: str) -> str:
    """The detector that produces ``feature``."""
    for name, cls in _REGISTRY.items():
        if any(spec.name == feature for spec in cls.features):
            return name
    raise KeyError(f"no registered detector produces feature {feature!r}")
