"""The gallery's image reading: only real images leave it, thumbnails are small and cached per file version."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from airflow_flux_redux.emulator.images import sample_image
from airflow_flux_redux.gallery.images import THUMB_SIDE, ImageUnavailable, ThumbnailCache, read_image

if TYPE_CHECKING:
    from pathlib import Path


def test_a_saved_file_that_is_no_image_is_never_served(tmp_path: Path) -> None:
    secret = tmp_path / "secrets.txt"
    secret.write_text("AIRFLOW__CORE__FERNET_KEY=abc")
    for location in (str(secret), f"file://{secret}", str(tmp_path / "missing.png")):
        with pytest.raises(ImageUnavailable):
            read_image(location)
    with pytest.raises(ImageUnavailable):
        ThumbnailCache().get(str(secret))


def test_thumbnails_are_small_jpegs_and_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "req_0.png"
    path.write_bytes(sample_image(1024, 768))
    cache = ThumbnailCache()
    first = cache.get(f"file://{path}")
    with Image.open(io.BytesIO(first.data)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == THUMB_SIDE and thumb.size[0] > thumb.size[1]
    assert cache.get(f"file://{path}") is first and (cache.hits, cache.misses) == (1, 1)
    # Rewritten under the same name (an output_name without {request_id}): a new thumbnail, not the old one.
    path.write_bytes(sample_image(300, 600))
    os.utime(path, (1, 1))
    with Image.open(io.BytesIO(cache.get(str(path)).data)) as thumb:
        assert thumb.size[1] > thumb.size[0]


def test_full_size_is_the_file_itself_with_its_type(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(sample_image(64, 48))
    image = read_image(str(path))
    assert image.data == path.read_bytes() and image.content_type == "image/png"


def test_the_cache_stays_within_its_byte_budget(tmp_path: Path) -> None:
    cache = ThumbnailCache(max_bytes=40_000)
    for index in range(12):
        path = tmp_path / f"{index}.png"
        path.write_bytes(sample_image(400, 400))
        cache.get(str(path))
    assert 0 < cache._size <= 40_000 and len(cache._items) < 12
