"""Shared test fixtures: the real-data folder, offline mode, a network guard, image bytes."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tests never reach a model hub: everything they load is built by the tests themselves.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IMGVERIFY_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$IMGVERIFY_DATA``): the real images the tests run on."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.fail(f"real test data not found at {SHARED_DATA}; set IMGVERIFY_DATA")
    return SHARED_DATA


@pytest.fixture
def no_network(monkeypatch):
    """Fail any socket connection that is not to this machine (hub downloads, URL fetches)."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and sock.family != socket.AF_UNIX:
            raise AssertionError(f"test attempted a network connection to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), mode: str = "RGB", seed: int = 0, **save) -> bytes:
    """A random image of the given Pillow mode, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    image = rgb.convert(mode) if mode != "RGB" else rgb
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.fixture
def make_image():
    """Factory fixture around :func:`image_bytes`."""
    return image_bytes
