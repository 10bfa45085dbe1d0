"""Detector registry: names to classes, in the style of timm's ``register_model``.

What a detector outputs is data in ``models/schema.py`` (``DETECTORS``: its module, features and whether it
draws heatmaps), so :func:`list_detectors`, :func:`feature_schema`, :func:`feature_owner` and
:func:`has_artifacts` read that table and import no detector (nor torch). A detector's module is imported on
the first :func:`get_detector_class` / :func:`create_detector` of one of its names; importing it runs
``@register_detector`` on its classes, which refuses a class that is not in the table or whose features differ
from its entry.

Adding a detector is one module in ``models/`` with ``@register_detector`` on its class, plus its entry in
``models/schema.py``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from models.schema import DETECTORS, FeatureSpec, entry_of

if TYPE_CHECKING:
    from models.base import Detector

_REGISTRY: dict[str, type[Detector]] = {}


def register_detector(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make ``cls`` creatable by its ``name``, which must have its entry in ``models/schema.py``
    with the same features (same specs, same order) and the same ``has_artifacts``."""
    entry = DETECTORS.get(cls.name)
    if entry is None:
        raise ValueError(
            f"detector {cls.name!r} ({cls.__module__}.{cls.__qualname__}) has no entry in models/schema.py "
            "DETECTORS; add one (module, features, has_artifacts)"
        )
    if tuple(cls.features) != entry.features:
        declared = [spec.name for spec in cls.features]
        expected = [spec.name for spec in entry.features]
        detail = f"{declared} vs {expected}" if declared != expected else "same names, different specs"
        raise ValueError(
            f"detector {cls.name!r}: its features differ from its entry in models/schema.py ({detail}); "
            "take them from the schema (models.schema.features_of)"
        )
    if bool(cls.has_artifacts) != entry.has_artifacts:
        raise ValueError(
            f"detector {cls.name!r}: has_artifacts={cls.has_artifacts} but models/schema.py says {entry.has_artifacts}"
        )
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"detector name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def list_detectors() -> list[str]:
    return sorted(DETECTORS)


def get_detector_class(name: str) -> type[Detector]:
    """The class registered as ``name``, importing its module (``models/schema.py`` says which) on first use."""
    cls = _REGISTRY.get(name)
    if cls is not None:
        return cls
    entry = entry_of(name)
    importlib.import_module(entry.module)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"detector {name!r}: importing {entry.module} (its module in models/schema.py) registered no such class"
        ) from None


def create_detector(name: str, config: dict[str, Any] | None = None, device: str = "cpu") -> Detector:
    """The one entry point that builds a detector (and loads its weights) from its name and config."""
    return get_detector_class(name)(config=config, device=device)


def feature_schema(detectors: list[str] | None = None) -> dict[str, FeatureSpec]:
    """Every feature of the given (default: all registered) detectors, in a stable order. Reads the schema
    table only: no detector module (and no torch) is imported."""
    names = list_detectors() if detectors is None else detectors
    return {spec.name: spec for name in names for spec in entry_of(name).features}


def feature_owner(feature: str) -> str:
    """The detector that produces ``feature``."""
    for name, entry in DETECTORS.items():
        if any(spec.name == feature for spec in entry.features):
            return name
    raise KeyError(f"no registered detector produces feature {feature!r}")


def has_artifacts(name: str) -> bool:
    """Whether detector ``name`` produces artifacts (heatmaps) when asked; without importing it."""
    return entry_of(name).has_artifacts
