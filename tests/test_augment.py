"""The training copies of an item: a route-specific laundered copy takes that route, reproducibly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from training.features import variant_bytes


@pytest.fixture
def photo(tmp_path) -> str:
    path = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)).save(path, quality=92)
    return str(path)


def test_a_thumbnail_copy_is_a_thumbnail_every_time_and_reproducible(photo):
    sizes = []
    for index in range(6):
        variant = f"launder-thumbnail#{index}"
        data = variant_bytes(photo, "", f"item{index}", variant)
        assert data == variant_bytes(photo, "", f"item{index}", variant)  # seeded by item and variant
        with Image.open(io.BytesIO(data)) as image:
            sizes.append(max(image.size))
    assert all(256 <= size <= 512 for size in sizes), sizes  # the route's long side, every copy
    assert len(set(sizes)) > 1  # drawn per copy, not one fixed size
    # A random route (launder#n) keeps the full size on some items: the thumbnail is one route in four.
    randomly = [variant_bytes(photo, "", f"item{i}", "launder#0") for i in range(8)]
    assert max(max(Image.open(io.BytesIO(data)).size) for data in randomly) > 512


def test_an_unknown_route_is_refused_naming_the_routes(photo):
    with pytest.raises(ValueError, match=r"unknown laundering route in 'launder-thumbnale#0'.*thumbnail"):
        variant_bytes(photo, "", "item", "launder-thumbnale#0")
