"""``imgverify deploy sync``: the GPU profile runs the CPU profile's trained product, copied, never retyped.

    imgverify deploy sync [--from serve_config.local.yaml] [--to serve_config.yaml] [--check]

``serve_config.yaml`` (production, GPU fractions) is written by people: replicas, GPU fractions, batch sizes,
timeouts, the heavier detectors it reports as context, and the comments that explain them. What the local profile
trained is copied into it by this command:

* the ``detector:`` settings of every detector the local profile runs (backbone, precision, head and its sha256,
  ``cls_layers``, weights ...). The one thing a GPU may set on its own is ``runtime: auto`` (a GPU runs clip_b16's
  fp32 weights in torch, the CPU in onnxruntime: the same function, one head for both);
* the ``fusion:`` block (the artifact, hence its threshold and uncertain range, and any override of them).

The file is edited in place, only those blocks (found by PyYAML's node positions), so layout and comments stay; a
marker comment above each says where it comes from. ``--check`` changes nothing and exits 1 when the files differ.
``tests/test_profiles.py`` fails when they drift apart; regenerate the KubeRay manifest after a sync.

Once serve_config.yaml names a fusion of its own (trained on its own features: docs/operations.md, "Training the
production fusion"), it no longer follows the local profile and this command refuses to overwrite it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deployments.config import AppArgs, DetectorProfile, DetectorUserConfig, Profile, load_profile

LOCAL = Path("serve_config.local.yaml")
PRODUCTION = Path("serve_config.yaml")
MARKER = "from {source} by `imgverify deploy sync` (bare file names: models/weights/); change it there"
# Detector settings a GPU profile may set differently, and the value it may set them to.
GPU_MAY_SET = {"runtime": "auto"}


class SyncError(ValueError):
    """The production profile cannot follow the local one as it stands (a detector missing, its own fusion)."""


# ---- what must be equal ------------------------------------------------------------------------------------------
def detector_settings_differ(local: dict[str, Any], production: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two detectors' settings, beyond what a GPU may set on its own."""
    keys = sorted(set(local) | set(production))
    return [
        key
        for key in keys
        if local.get(key) != production.get(key) and GPU_MAY_SET.get(key, object()) != production.get(key)
    ]


def fusion_settings(profile: Profile) -> dict[str, Any]:
    """The ``fusion:`` block as its config file states it (unset keys left out), in plain YAML types."""
    return profile.args.fusion.model_dump(mode="json", exclude_unset=True)


def drift(local: Profile, production: Profile) -> list[str]:
    """Every way ``production`` differs from the product ``local`` defines, one sentence each (empty: in sync)."""
    problems = []
    ours, theirs = fusion_settings(local), fusion_settings(production)
    if ours != theirs:
        problems.append(f"fusion: the local profile has {ours}, production {theirs}")
    for name in local.args.detector_names():
        if name not in production.detectors:
            problems.append(f"{name}: the local profile runs it, production does not")
            continue
        settings = local.detectors[name].user_config.detector
        other = production.detectors[name].user_config.detector
        for key in detector_settings_differ(settings, other):
            problems.append(f"{name}.{key}: the local profile has {settings.get(key)!r}, production {other.get(key)!r}")
    return problems


# ---- editing the production file in place ------------------------------------------------------------------------
@dataclass(frozen=True)
class Edit:
    """Replace lines [start, stop) of the file with ``lines``."""

    start: int
    stop: int
    lines: list[str]


def _get(mapping: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    """(key node, value node) of ``key`` in a mapping node, or None."""
    if not isinstance(mapping, yaml.MappingNode):
        return None
    return next(((k, v) for k, v in mapping.value if k.value == key), None)


def _last_line(node: yaml.Node) -> int:
    """The 0-based line on which ``node``'s text ends (a block collection ends with its last child)."""
    if isinstance(node, yaml.ScalarNode) or node.flow_style or not node.value:
        mark = node.end_mark
        return mark.line if mark.column > 0 else mark.line - 1
    last = node.value[-1]
    return _last_line(last[1] if isinstance(node, yaml.MappingNode) else last)


def _inline(value: Any) -> str:
    """``value`` as one line of YAML (flow style for lists and mappings)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _block(key: str, values: dict[str, Any], indent: int, source: str) -> list[str]:
    """``key:`` and one line per entry of ``values``, under the marker comment."""
    pad = " " * indent
    lines = [f"{pad}# {MARKER.format(source=source)}", f"{pad}{key}:"]
    return lines + [f"{pad}  {name}: {_inline(value)}" for name, value in values.items()]


def _replace(lines: list[str], key: yaml.Node, value: yaml.Node, block: list[str]) -> Edit:
    """An edit that puts ``block`` where ``key: value`` stands (with its marker line above, if there is one)."""
    start = key.start_mark.line
    if start > 0 and lines[start - 1].strip().startswith("# ") and "imgverify deploy sync" in lines[start - 1]:
        start -= 1
    return Edit(start, _last_line(value) + 1, block)


def _app_node(root: yaml.Node) -> yaml.Node:
    apps = _get(root, "applications")
    if apps is None or len(apps[1].value) != 1:
        raise SyncError("the production config must hold exactly one application")
    return apps[1].value[0]


def _fusion_edit(lines: list[str], args: yaml.Node, local: Profile, production: Profile, source: str) -> Edit:
    """The edit that makes production's ``fusion:`` block the local profile's."""
    own = production.args.fusion.model
    if own not in (None, "rule", local.args.fusion.model):
        raise SyncError(
            f"production names a fusion of its own ({own}): it no longer follows the local profile, so its "
            "fusion and the detector settings that fusion was trained with are not overwritten"
        )
    found = _get(args, "fusion")
    if found is None:
        detectors_key, detectors = _get(args, "detectors")
        block = _block("fusion", fusion_settings(local), detectors_key.start_mark.column, source)
        return Edit(_last_line(detectors) + 1, _last_line(detectors) + 1, block)
    key, value = found
    return _replace(lines, key, value, _block("fusion", fusion_settings(local), key.start_mark.column, source))


def _detector_edit(lines: list[str], deployment: yaml.Node, settings: dict[str, Any], source: str) -> Edit | None:
    """The edit that makes one deployment's ``user_config.detector`` equal ``settings`` (None: nothing to do)."""
    name = _get(deployment, "name")[1].value
    found = _get(deployment, "user_config")
    detector = _get(found[1], "detector") if found else None
    if not settings and detector is None:
        return None
    if deployment.flow_style or found is None:
        raise SyncError(f"deployment {name}: give it a user_config as a block mapping to sync its detector settings")
    user_config_key, user_config = found
    if user_config.flow_style:  # {max_batch_size: 8, ...}: rewritten as a block, its other keys as they were
        pad = " " * user_config_key.start_mark.column
        kept = yaml.safe_load(yaml.serialize(user_config)) or {}
        block = [f"{pad}user_config:"] + [f"{pad}  {k}: {_inline(v)}" for k, v in kept.items() if k != "detector"]
        if settings:
            block += _block("detector", settings, len(pad) + 2, source)
        return Edit(user_config_key.start_mark.line, _last_line(user_config) + 1, block)
    indent = user_config.value[0][0].start_mark.column
    if detector is None:
        stop = _last_line(user_config) + 1
        return Edit(stop, stop, _block("detector", settings, indent, source))
    key, value = detector
    return _replace(lines, key, value, _block("detector", settings, indent, source) if settings else [])


def _gpu_settings(local: dict[str, Any], production: dict[str, Any]) -> dict[str, Any]:
    """The local settings, with what a GPU sets its own way (a CPU runtime named locally becomes ``runtime: auto``:
    copied as it is, clip_b16 would refuse to start on CUDA), kept where production already says so."""
    gpu = {k: v for k, v in GPU_MAY_SET.items() if (k in local or k in production) and local.get(k) != v}
    return {**local, **gpu}


def sync_text(production_text: str, local: Profile, source: str = str(LOCAL)) -> str:
    """``production_text`` with the local profile's detector settings and fusion block copied in."""
    production = unchecked_profile(production_text)
    app = _app_node(yaml.compose(production_text))
    lines = production_text.splitlines()
    missing = [n for n in local.args.detector_names() if n not in production.detectors]
    if missing:
        raise SyncError(
            f"production does not run {missing}, which the local profile runs: add each to args.detectors and to "
            "the deployments (with its GPU fraction), then sync"
        )
    edits = [_fusion_edit(lines, _get(app, "args")[1], local, production, source)]
    deployments = {_get(d, "name")[1].value: d for d in _get(app, "deployments")[1].value}
    for name in local.args.detector_names():
        if name not in deployments:
            raise SyncError(f"production lists {name} in args.detectors but has no deployment entry for it")
        theirs = production.detectors[name].user_config.detector
        settings = _gpu_settings(local.detectors[name].user_config.detector, theirs)
        edit = _detector_edit(lines, deployments[name], settings, source)
        if edit is not None:
            edits.append(edit)
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):  # bottom up: earlier line numbers stay valid
        lines[edit.start : edit.stop] = edit.lines
    return "\n".join(lines) + "\n"


def unchecked_profile(text: str) -> Profile:
    """The detectors and fusion of a config's text, without load_profile's fusion check (a production file whose
    fusion is unset or stale is what sync mends)."""
    (app,) = yaml.safe_load(text)["applications"]
    args = AppArgs.model_validate(app.get("args") or {})
    by_name = {d["name"]: d for d in app.get("deployments", [])}
    detectors = {
        name: DetectorProfile(
            name=name, user_config=DetectorUserConfig.model_validate(by_name.get(name, {}).get("user_config") or {})
        )
        for name in args.detector_names()
    }
    return Profile(args=args, detectors=detectors)


# ---- the command -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imgverify deploy sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, default=LOCAL, help="the CPU profile that was trained")
    parser.add_argument("--to", dest="target", type=Path, default=PRODUCTION, help="the GPU profile, edited in place")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when the files differ")
    args = parser.parse_args(argv)
    try:
        local = load_profile(args.source)
        before = args.target.read_text()
        after = sync_text(before, local, args.source.name)
        left = drift(local, unchecked_profile(after))
        if left:  # the edit itself went wrong: never write a half-synced file
            raise SyncError("after the edit the profiles still differ: " + "; ".join(left))
    except (OSError, ValueError) as err:
        print(f"imgverify deploy sync: {err}", file=sys.stderr)
        return 1
    if after == before:
        print(f"{args.target} runs {args.source}'s trained detectors and fusion: nothing to change")
        return 0
    if args.check:
        changed = drift(local, unchecked_profile(before))
        print(f"{args.target} differs from {args.source}: " + ("; ".join(changed) or "layout only"), file=sys.stderr)
        print(f"run: imgverify deploy sync --from {args.source} --to {args.target}", file=sys.stderr)
        return 1
    args.target.write_text(after)
    print(f"wrote {args.target}; now regenerate the KubeRay manifest:")
    print(f"  imgverify deploy kuberay --config {args.target} --out deploy/kuberay/rayservice.yaml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
