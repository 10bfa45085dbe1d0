"""serve_config.yaml (GPU, production) runs serve_config.local.yaml's trained product: same detector settings for
every detector the fusion reads, same fusion artifact, threshold and uncertain range (``imgverify deploy sync``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from deployments.config import load_profile
from serve_app import cli
from serve_app.profile_sync import SyncError, detector_settings_differ, drift, sync_text, unchecked_profile

LOCAL = REPO / "serve_config.local.yaml"
PRODUCTION = REPO / "serve_config.yaml"
HEAVY = {"ghostnet", "clip_h14", "clip_bigg", "dino", "fatformer", "mantranet"}
SYNC_HINT = "run `imgverify deploy sync` (serve_app/profile_sync.py), then `imgverify deploy kuberay`"


@pytest.fixture(scope="module")
def local():
    return load_profile(LOCAL)


@pytest.fixture(scope="module")
def production():
    return load_profile(PRODUCTION)


def test_production_fusion_inputs_have_the_local_detector_settings(local, production):
    """The drift test: every detector the production fusion reads runs with the local profile's settings (backbone,
    precision, head and its sha256, cls_layers, weights), except what a GPU may set itself (runtime auto); replicas,
    resources and batch sizes are production's own and not compared."""
    verdict = production.args.verdict()
    inputs = [name for name, role in verdict.roles.items() if role == "fusion input"]
    assert inputs and set(inputs) <= set(local.args.detector_names())
    for name in inputs:
        ours = local.detectors[name].user_config.detector
        theirs = production.detectors[name].user_config.detector
        assert detector_settings_differ(ours, theirs) == [], f"{name}: {ours} vs {theirs}; {SYNC_HINT}"
    assert drift(local, production) == [], SYNC_HINT


def test_production_decides_with_the_local_fusion_and_reports_the_heavy_detectors_as_context(local, production):
    ours, theirs = local.args.verdict(), production.args.verdict()
    assert production.args.fusion.model == local.args.fusion.model == "fusion_local.json", SYNC_HINT
    assert theirs.fusion.version == ours.fusion.version and theirs.fusion.kind == "trained" and theirs.fusion.calibrated
    assert (theirs.threshold, theirs.uncertain_range) == (ours.threshold, ours.uncertain_range)
    assert theirs.fusion.features == ours.fusion.features
    # The seed's heavier detectors still run and are reported, but no fusion trained with them exists yet.
    assert HEAVY <= set(production.args.detector_names())
    assert {theirs.roles[name] for name in HEAVY} == {"context"}
    assert {n for n, r in theirs.roles.items() if r == "fusion input"} == {
        n for n, r in ours.roles.items() if r == "fusion input"
    }
    # On GPU fractions: each trained detector (one with weights in its settings) gets a share of a GPU in production.
    trained = [n for n, r in theirs.roles.items() if r == "fusion input" and local.detectors[n].user_config.detector]
    assert trained
    for name in trained:
        assert 0 < production.detectors[name].num_gpus < 1 and local.detectors[name].num_gpus == 0, name


def test_the_committed_files_are_in_sync(capsys):
    assert cli.main(["deploy", "sync", "--from", str(LOCAL), "--to", str(PRODUCTION), "--check"]) == 0, SYNC_HINT
    assert "nothing to change" in capsys.readouterr().out


def _changed_local(tmp_path: Path) -> Path:
    """A copy of the local profile with a new clip_b16 head pin and a fusion threshold override."""
    config = yaml.safe_load(LOCAL.read_text())
    (app,) = config["applications"]
    app["args"]["fusion"]["threshold"] = 0.7
    clip = next(d for d in app["deployments"] if d["name"] == "clip_b16")
    clip["user_config"]["detector"]["head_sha256"] = "ab" * 32
    path = tmp_path / "serve_config.local.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_sync_copies_what_changed_and_keeps_everything_else(tmp_path, capsys):
    changed = load_profile(_changed_local(tmp_path))
    before = PRODUCTION.read_text()
    problems = drift(changed, unchecked_profile(before))
    assert any(p.startswith("clip_b16.head_sha256: ") for p in problems)
    assert any(p.startswith("fusion: ") and "'threshold': 0.7" in p for p in problems)
    after = sync_text(before, changed)
    assert drift(changed, unchecked_profile(after)) == []
    assert sync_text(after, changed) == after  # idempotent
    synced = load_profile_text(after, tmp_path)
    assert synced.detectors["clip_b16"].user_config.detector["head_sha256"] == "ab" * 32
    assert synced.args.fusion.threshold == 0.7
    # Only the synced lines changed: comments, resources and the heavy detectors' settings are as written.
    shipped_sha = load_profile(LOCAL).detectors["clip_b16"].user_config.detector["head_sha256"]
    assert set(before.splitlines()) - set(after.splitlines()) == {f"            head_sha256: {shipped_sha}"}
    assert [line for line in after.splitlines() if line.lstrip().startswith("#")] == [
        line for line in before.splitlines() if line.lstrip().startswith("#")
    ]
    assert autoscaling(after) == autoscaling(before)  # production's own, sized in docs/cluster.md
    # The command writes the file, and says what to regenerate next.
    target = tmp_path / "serve_config.yaml"
    target.write_text(before)
    argv = ["deploy", "sync", "--from", str(tmp_path / "serve_config.local.yaml"), "--to", str(target)]
    assert cli.main([*argv, "--check"]) == 1 and "head_sha256" in capsys.readouterr().err
    assert target.read_text() == before
    assert cli.main(argv) == 0 and target.read_text() == after
    assert "imgverify deploy kuberay" in capsys.readouterr().out


def autoscaling(text: str) -> dict[str, dict]:
    """Each deployment's ``autoscaling_config`` in a config's text."""
    (app,) = yaml.safe_load(text)["applications"]
    return {d["name"]: d["autoscaling_config"] for d in app["deployments"] if "autoscaling_config" in d}


def test_production_autoscaling_is_serves_own_and_keeps_the_verdict_up(production):
    """Every detector autoscales with keys Serve knows (its AutoscalingConfig accepts unknown ones silently), a
    target of whole batches (at most two), and the detectors that decide a verdict keep 2 replicas at least."""
    from ray.serve.config import AutoscalingConfig

    scaling = autoscaling(PRODUCTION.read_text())
    assert set(scaling) == set(production.args.detector_names())
    roles = production.args.verdict().roles
    for name, settings in scaling.items():
        assert set(settings) <= set(AutoscalingConfig.model_fields), name
        checked = AutoscalingConfig.model_validate(settings)
        batch = production.detectors[name].user_config.max_batch_size
        assert checked.target_ongoing_requests % batch == 0 and checked.target_ongoing_requests <= 2 * batch, name
        if roles[name] in ("fusion input", "hard evidence"):
            assert checked.min_replicas >= 2, name


def load_profile_text(text: str, folder: Path):
    path = folder / "synced.yaml"
    path.write_text(text)
    return load_profile(path)


SMALL = """\
applications:
  - name: x
    import_path: serve_app.app:build_app
    args:
      detectors: [{{name: forensics}}, {{name: clip_b16}}]
      fusion: {fusion}
    deployments:
      - name: forensics
        user_config: {{max_batch_size: 8}}  # flow style: rewritten as a block only when it must change
      - name: clip_b16
        # batch sizes are production's own
        user_config:
          max_batch_size: 32
{detector}"""


def _small_local(tmp_path: Path, settings: dict) -> Path:
    text = SMALL.format(fusion="{model: rule}", detector=f"          detector: {json.dumps(settings)}\n")
    path = tmp_path / "local.yaml"
    path.write_text(text.replace("{max_batch_size: 8}", "{max_batch_size: 4, detector: {max_side: 512}}"))
    return path


def test_sync_inserts_and_rewrites_detector_blocks(tmp_path):
    local = load_profile(_small_local(tmp_path, {"backbone": "b.onnx", "precision": "fp32", "runtime": "onnxruntime"}))
    # clip_b16 without a detector block (inserted), forensics in flow style (rewritten), runtime auto kept on a GPU.
    production = SMALL.format(fusion="{model: null}", detector="")
    after = sync_text(production, local)
    profile = unchecked_profile(after)
    assert drift(local, profile) == []
    assert profile.detectors["forensics"].user_config.max_batch_size == 8  # production's batch size stays
    assert profile.detectors["forensics"].user_config.detector == {"max_side": 512}
    assert profile.args.fusion.model == "rule"
    # A CPU runtime named locally would not start on CUDA: production gets runtime auto, with or without one before.
    assert profile.detectors["clip_b16"].user_config.detector["runtime"] == "auto"
    gpu = SMALL.format(fusion="{model: rule}", detector="          detector: {runtime: auto}\n")
    kept = unchecked_profile(sync_text(gpu, local)).detectors["clip_b16"].user_config.detector
    assert kept == {"backbone": "b.onnx", "precision": "fp32", "runtime": "auto"}
    assert "# batch sizes are production's own" in after


def test_sync_refuses_what_it_cannot_follow(tmp_path):
    local = load_profile(_small_local(tmp_path, {"backbone": "b.onnx"}))
    own_fusion = SMALL.format(fusion="{model: /models/imgverify/fusion_full.json}", detector="")
    with pytest.raises(SyncError, match="fusion of its own"):
        sync_text(own_fusion, local)
    without_clip = SMALL.format(fusion="{model: rule}", detector="").replace(", {name: clip_b16}", "")
    with pytest.raises(SyncError, match=r"does not run \['clip_b16'\]"):
        sync_text(without_clip, local)


def test_a_gpu_may_set_runtime_auto_and_nothing_else():
    assert detector_settings_differ({"runtime": "onnxruntime"}, {"runtime": "auto"}) == []
    assert detector_settings_differ({}, {"runtime": "auto"}) == []
    assert detector_settings_differ({"runtime": "auto"}, {"runtime": "torch"}) == ["runtime"]
    assert detector_settings_differ({"precision": "fp32"}, {"precision": "int8"}) == ["precision"]
    assert detector_settings_differ({"head_sha256": "a"}, {}) == ["head_sha256"]
    assert detector_settings_differ({}, {"fp16": True}) == ["fp16"]  # fp16 moves the embeddings: not the product


@pytest.mark.parametrize("config", [LOCAL, PRODUCTION], ids=["local", "production"])
def test_the_ingress_json_refusal_comes_before_serves_plain_text_queue_bound(config):
    """Behind HAProxy a request counts as queued in Serve until the ingress replica starts it, so an ingress whose
    max_queued_requests is below max_ongoing_requests answers bursts with Serve's plain-text 503 before its own
    JSON ``overloaded`` (bench/overload.py at 128 clients: 14-170 plain-text answers a run at 64, none at 256)."""
    (app,) = [a for a in yaml.safe_load(config.read_text())["applications"] if a["import_path"].endswith("build_app")]
    (ingress,) = [d for d in app["deployments"] if d["name"] == "FusionIngress"]
    assert ingress["max_queued_requests"] >= ingress["max_ongoing_requests"], ingress
