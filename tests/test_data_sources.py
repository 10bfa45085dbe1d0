"""The data module: where sets are looked up, and a pinned fetch against a local HTTP server (never the sources)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.cli import main as cli_main
from training import data_sources
from training.data_sources import DataSet, DataUnavailable


@pytest.fixture
def roots(tmp_path, monkeypatch) -> dict[str, Path]:
    """An empty $IMGVERIFY_DATA and an empty cache, both under tmp_path."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    monkeypatch.setenv(data_sources.DATA_ENV, str(data))
    monkeypatch.setenv("IMGVERIFY_CACHE", str(cache))
    return {"data": data, "cache": cache / "data"}


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[tuple[str, Path, list[str]]]:
    """A static HTTP server on 127.0.0.1 over a temporary folder: (base URL, folder, paths requested)."""
    folder = tmp_path / "upstream"
    folder.mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # quiet
            pass

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, requested
    httpd.shutdown()
    httpd.server_close()


def tiny_registry(tmp_path: Path, monkeypatch, base: str, files: dict[str, tuple[str, bytes]]) -> None:
    """Register set ``tiny``: ``files`` maps a path in the set to (label, bytes served at base/<name>)."""
    registry = tmp_path / "registry"
    registry.mkdir(exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "label", "width", "sha256", "source"])
    for path, (label, data) in files.items():
        writer.writerow([path, label, "1", hashlib.sha256(data).hexdigest(), f"{base}/{Path(path).name}"])
    (registry / "tiny.csv.gz").write_bytes(gzip.compress(buffer.getvalue().encode()))
    monkeypatch.setattr(data_sources, "REGISTRY_DIR", registry)
    monkeypatch.setitem(data_sources.SETS, "tiny", DataSet("tiny", "a local test server", "test"))


def test_sets_are_looked_up_in_the_data_folder_then_the_cache(roots, monkeypatch):
    assert data_sources.search_roots() == [roots["data"].resolve(), roots["cache"]]
    assert data_sources.locate("modern-matched") is None
    reason = data_sources.missing_reason("modern-matched")
    assert "`imgverify data fetch modern-matched`" in reason and str(roots["data"]) in reason
    with pytest.raises(DataUnavailable, match="imgverify data fetch modern-matched"):
        data_sources.require("modern-matched")
    (roots["cache"] / "modern-matched").mkdir(parents=True)
    assert data_sources.locate("modern-matched") == roots["cache"] / "modern-matched"
    (roots["data"] / "modern-matched").mkdir()
    assert data_sources.locate("modern-matched") == roots["data"].resolve() / "modern-matched"
    assert data_sources.data_root() == roots["data"].resolve()
    monkeypatch.delenv(data_sources.DATA_ENV)  # then ../shared/data beside the repository comes first
    assert data_sources.search_roots()[0] == data_sources.REPO.parent / "shared" / "data"


def test_fetch_downloads_verifies_and_writes_labels(roots, server, tmp_path, monkeypatch):
    base, upstream, requested = server
    photo, generated = b"\xff\xd8 a photo", b"\x89PNG an image"
    (upstream / "photo.jpg").write_bytes(photo)
    (upstream / "generated.png").write_bytes(generated)
    tiny_registry(
        tmp_path, monkeypatch, base, {"real/photo.jpg": ("real", photo), "ai/generated.png": ("ai", generated)}
    )

    assert cli_main(["data", "fetch", "tiny"]) == 0
    folder = roots["cache"] / "tiny"
    assert (folder / "real" / "photo.jpg").read_bytes() == photo
    assert (folder / "ai" / "generated.png").read_bytes() == generated
    with open(folder / "labels.csv", newline="") as handle:  # the set's columns, without the pins
        assert list(csv.DictReader(handle)) == [
            {"file": "real/photo.jpg", "label": "real", "width": "1"},
            {"file": "ai/generated.png", "label": "ai", "width": "1"},
        ]
    assert data_sources.locate("tiny") == folder
    assert sorted(requested) == ["/generated.png", "/photo.jpg"]
    assert data_sources.fetch("tiny") == folder  # everything verified in place: nothing downloaded again
    assert len(requested) == 2


def test_fetch_refuses_a_file_that_does_not_match_its_pin(roots, server, tmp_path, monkeypatch):
    base, upstream, _ = server
    (upstream / "photo.jpg").write_bytes(b"changed upstream")
    tiny_registry(tmp_path, monkeypatch, base, {"real/photo.jpg": ("real", b"what was pinned")})
    with pytest.raises(DataUnavailable, match="real/photo.jpg"):
        data_sources.fetch("tiny", roots["data"])
    assert not (roots["data"] / "tiny" / "real" / "photo.jpg").exists()
    assert not (roots["data"] / "tiny" / "labels.csv").exists()
    assert cli_main(["data", "fetch", "tiny"]) == 1


def test_sets_without_a_pinned_source_are_refused_with_the_reason(roots, capsys):
    with pytest.raises(DataUnavailable, match="cannot be fetched: its source has no license"):
        data_sources.fetch("early-generators-ai")
    with pytest.raises(DataUnavailable, match="unknown image set 'nope'"):
        data_sources.fetch("nope")
    assert "copy it from ../shared/data" in data_sources.missing_reason("early-generators-ai")
    assert cli_main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "early-generators-ai" in listing and "not fetchable" in listing


def test_every_registry_is_pinned_to_a_commit_and_a_sha256():
    for name, dataset in data_sources.SETS.items():
        if dataset.unfetchable:
            assert not dataset.registry.exists(), name
            continue
        rows = data_sources.read_registry(dataset.registry)
        assert rows, name
        for row in rows:
            assert len(row["sha256"]) == 64 and int(row["sha256"], 16) >= 0, (name, row["file"])
            assert data_sources.source_url(row["source"]).startswith("https://raw.githubusercontent.com/"), row


def test_a_missing_set_skips_here_and_fails_where_every_set_is_required(monkeypatch):
    from conftest import data_missing

    monkeypatch.delenv(data_sources.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="imgverify data fetch x"):
        data_missing("run `imgverify data fetch x`")
    monkeypatch.setenv(data_sources.REQUIRE_ENV, "1")  # what .ci/run exports when ../shared/data is there
    with pytest.raises(pytest.fail.Exception, match="IMGVERIFY_REQUIRE_DATA is set"):
        data_missing("run `imgverify data fetch x`")
