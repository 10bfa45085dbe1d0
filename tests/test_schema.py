"""The feature schema (``models/schema.py``): importable without torch, and the one definition of every feature."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any, ClassVar

import pytest

import models
from conftest import REPO
from models import registry, schema
from models.base import Detector, DetectorResult
from models.schema import DETECTORS, DetectorEntry, FeatureSpec

LOCAL_DETECTORS = ["provenance", "forensics", "clip_b16"]  # serve_config.local.yaml, in its order

# Run in a fresh interpreter: this test process has long imported torch through other tests.
SCHEMA_ONLY = textwrap.dedent(
    """
    import json, sys

    import models, models.verdict, deployments.config
    from models.schema import DETECTORS

    profile = deployments.config.load_profile("serve_config.local.yaml")
    verdict = profile.args.verdict()
    names = profile.args.detector_names()
    out = {
        "detectors": names,
        "schema": list(verdict.schema),
        "feature_schema": list(models.feature_schema(names)),
        "fusion_features": list(verdict.fusion.features),
        "fusion_type": type(verdict.fusion).__name__,
        "heatmaps": [n for n in names if models.has_artifacts(n)],
        "all_features": len(models.feature_schema()),
        "heavy": sorted(m for m in ("torch", "cv2", "timm", "open_clip", "transformers") if m in sys.modules),
        "detector_modules": sorted({e.module for e in DETECTORS.values()} & set(sys.modules)),
    }
    models.get_detector_class("debug_mean")  # the first use of a class imports its module, and only that one
    out["after_debug"] = sorted({e.module for e in DETECTORS.values()} & set(sys.modules))
    out["torch_after_debug"] = "torch" in sys.modules
    print(json.dumps(out))
    """
)


def test_schema_and_verdict_need_no_torch_nor_any_detector_module():
    run = subprocess.run(
        [sys.executable, "-c", SCHEMA_ONLY], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []  # no torch, no OpenCV, no model library
    assert out["detector_modules"] == []  # not one detector module imported to build the verdict
    assert out["detectors"] == LOCAL_DETECTORS
    expected = [spec.name for name in LOCAL_DETECTORS for spec in DETECTORS[name].features]
    assert out["schema"] == out["feature_schema"] == expected
    assert out["schema"][:3] == ["exif_score", "has_exif", "software_flag"]
    assert out["schema"][-3:] == ["clip_b16_prob", "clip_b16_pub_prob", "clip_b16_novelty"]
    assert len(out["schema"]) == 11 + 15 + 3
    # The committed fusion model of the local profile, with its features in its own order.
    artifact = json.loads((REPO / "models" / "weights" / "fusion_local.json").read_text())
    assert out["fusion_type"] == "TrainedFusion"
    assert out["fusion_features"] == artifact["features"]
    assert set(out["fusion_features"]) <= set(out["schema"])
    assert out["heatmaps"] == ["forensics"]
    assert out["all_features"] == sum(len(e.features) for e in DETECTORS.values())
    assert out["after_debug"] == ["models.debug"] and out["torch_after_debug"] is False


def test_every_detector_class_declares_exactly_its_schema_entry():
    assert models.list_detectors() == sorted(DETECTORS)
    assert len(DETECTORS) == 16
    for name, entry in DETECTORS.items():
        cls = models.get_detector_class(name)
        assert cls.name == name
        assert cls.__module__ == entry.module, name
        assert cls.features == entry.features, name
        assert cls.has_artifacts is entry.has_artifacts, name
        assert registry.has_artifacts(name) is entry.has_artifacts
    assert sorted(n for n, e in DETECTORS.items() if e.has_artifacts) == ["forensics", "mantranet"]


def test_schema_order_owners_and_unknown_names():
    assert list(models.feature_schema(["forensics", "ghostnet"]))[-2:] == ["geometry_generator_size", "ghostnet_score"]
    assert list(models.feature_schema(["clip_b16"])) == ["clip_b16_prob", "clip_b16_pub_prob", "clip_b16_novelty"]
    assert list(models.feature_schema(["mantranet"])) == ["mantra_anomaly", "mantra_area"]
    spec = models.feature_schema(["forensics"])["jpeg_quality"]
    assert (spec.low, spec.high, spec.direction, spec.probability, spec.fusion_input) == (
        1.0,
        100.0,
        "neutral",
        False,
        False,
    )
    assert registry.feature_owner("clip_probe_rine_prob") == "clip_probe_rine"
    assert registry.feature_owner("aigc_label") == "provenance"
    with pytest.raises(KeyError, match="no registered detector produces"):
        registry.feature_owner("nope_prob")
    for call in (models.get_detector_class, models.has_artifacts, lambda n: models.feature_schema([n])):
        with pytest.raises(KeyError, match="unknown detector 'nope'"):
            call("nope")


def test_only_calibrated_heads_are_probabilities():
    """``probability`` means calibrated on held-out data (what the explicit rule fusion may average): the heads trained
    here and Platt-calibrated on their validation split. Zero-shot prompt softmaxes, FatFormer's raw softmax and
    published probes are P(AI)-shaped scores, never flagged."""
    flagged = {spec.name for entry in DETECTORS.values() for spec in entry.features if spec.probability}
    calibrated_here = {"clip_b16_prob", "dino_prob", "effnet_artifact_prob", "ghostnet_score"}
    assert flagged == calibrated_here | {"debug_prob", "debug_sleep_prob", "debug_fail_prob"}  # + test stand-ins
    for name in ("clip_b16_pub_prob", "clip_h14_prob", "clip_bigg_prob", "fatformer_prob", "clip_probe_rine_prob"):
        assert name not in flagged and "not calibrated" in models.feature_schema()[name].description
    # Only provenance can settle a verdict alone with hard evidence (models.verdict's "hard evidence" role).
    assert [name for name, entry in DETECTORS.items() if entry.hard_evidence] == ["provenance"]


def test_a_feature_name_belongs_to_one_detector():
    spec = FeatureSpec("shared", 0.0, 1.0, "neutral", "x")
    with pytest.raises(ValueError, match="feature 'shared' of 'b' already belongs to 'a'"):
        schema._check_unique_features({"a": DetectorEntry("m", (spec,)), "b": DetectorEntry("m", (spec,))})
    schema._check_unique_features(DETECTORS)  # the real table passes


def _detector(name: str, features: tuple[FeatureSpec, ...], artifacts: bool = False) -> type[Detector]:
    class Probe(Detector):
        default_config: ClassVar[dict[str, Any]] = {}
        version = "probe"
        has_artifacts = artifacts

        def preprocess(self, image: Any) -> None:
            return None

        def _forward(self, inputs: list[Any]) -> list[Any]:
            return inputs

        def postprocess(self, output: Any, artifacts: bool) -> DetectorResult:
            return DetectorResult()

    Probe.name = name
    Probe.features = features
    return Probe


def test_register_refuses_a_class_that_differs_from_its_schema_entry():
    debug_mean = models.get_detector_class("debug_mean")
    registered = dict(registry._REGISTRY)
    real = DETECTORS["debug_mean"].features
    changed = (FeatureSpec("debug_prob", 0.0, 1.0, "ai_high", "a different description", True),)
    with pytest.raises(ValueError, match="'debug_mean': its features differ .*same names, different specs"):
        models.register_detector(_detector("debug_mean", changed))
    with pytest.raises(ValueError, match=r"\['debug_prob', 'extra'\] vs \['debug_prob'\]"):
        models.register_detector(_detector("debug_mean", (*real, FeatureSpec("extra", 0, 1, "neutral", "x"))))
    with pytest.raises(ValueError, match="has_artifacts=True but models/schema.py says False"):
        models.register_detector(_detector("debug_mean", real, artifacts=True))
    with pytest.raises(ValueError, match="'not_in_schema' .* has no entry in models/schema.py"):
        models.register_detector(_detector("not_in_schema", real))
    with pytest.raises(ValueError, match="'debug_mean' registered twice"):
        models.register_detector(_detector("debug_mean", real))  # same features, but not the registered class
    assert registry._REGISTRY == registered  # nothing refused was registered
    assert models.get_detector_class("debug_mean") is debug_mean and debug_mean.__module__ == "models.debug"
    assert models.register_detector(debug_mean) is debug_mean  # the registered class itself passes again
