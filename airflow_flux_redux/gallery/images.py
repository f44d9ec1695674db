"""Image bytes for the gallery: saved files read through ObjectStoragePath, checked, thumbnailed, cached.

Only locations a task recorded in its own XCom result reach this module (the app serves by task and
index, never by a path in the request), and only real images leave it: every file is decoded by Pillow
first, so even a tampered XCom cannot turn the gallery into a reader of arbitrary files.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

#: Longest side of a thumbnail (CSS shows it at half that on a normal screen, sharp on a 2x one).
THUMB_SIDE = 320
#: A saved image larger than this is not read (fal's largest output is far smaller).
MAX_SOURCE_BYTES = 64 * 1024 * 1024
_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class ImageUnavailable(Exception):
    """The image cannot be shown: missing, too large, or not an image."""


@dataclass(frozen=True)
class ImageBytes:
    data: bytes
    content_type: str


def read_image(location: str) -> ImageBytes:
    """The file at ``location`` (any ObjectStoragePath URI or local path), if it is a PNG, JPEG or WebP image."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    try:
        with ObjectStoragePath(location).open("rb") as source:
            data = source.read(MAX_SOURCE_BYTES + 1)
    except (OSError, ValueError) as err:
        raise ImageUnavailable(f"cannot read the saved file ({type(err).__name__})") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise ImageUnavailable(f"the saved file is over {MAX_SOURCE_BYTES} bytes")
    return ImageBytes(data, _check(data))


def _check(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageUnavailable("the saved file is not an image") from None
    if kind not in _TYPES:
        raise ImageUnavailable(f"the saved file is a {kind} image, not PNG, JPEG or WebP")
    return _TYPES[kind]


def make_thumbnail(source: ImageBytes, side: int = THUMB_SIDE) -> ImageBytes:
    """A JPEG no larger than ``side`` pixels on its longest side (transparent parts on white)."""
    with Image.open(io.BytesIO(source.data)) as image:
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, "white")
            flat.paste(rgba, mask=rgba.getchannel("A"))
        else:
            flat = image.convert("RGB")
    out = io.BytesIO()
    flat.save(out, format="JPEG", quality=82, optimize=True)
    return ImageBytes(out.getvalue(), "image/jpeg")


class ThumbnailCache:
    """Thumbnails by location, in memory, least recently used first out (bounded in bytes).

    A location names one file for good (the operator names files by request id, or by a pattern the user
    chose); the cache keys on the location with its size and modification time, so a file rewritten under
    the same name gets a new thumbnail.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, int, float], ImageBytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, location: str) -> ImageBytes:
        key = _identity(location)
        with self._lock:
            cached = self._items.get(key)
            if cached is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return cached
            self.misses += 1
        thumbnail = make_thumbnail(read_image(location))
        with self._lock:
            if key not in self._items:
                self._items[key] = thumbnail
                self._size += len(thumbnail.data)
            while self._size > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._size -= len(dropped.data)
        return thumbnail


def _identity(location: str) -> tuple[str, int, float]:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    try:
        info = ObjectStoragePath(location).stat()
    except (OSError, ValueError) as err:
        raise ImageUnavailable(f"cannot read the saved file ({type(err).__name__})") from None
    mtime = getattr(info, "st_mtime", None)
    if mtime is None and isinstance(info, dict):
        mtime = info.get("mtime") or info.get("LastModified") or 0
    size = getattr(info, "st_size", None)
    if size is None and isinstance(info, dict):
        size = info.get("size") or 0
    return location, int(size or 0), float(mtime.timestamp() if hasattr(mtime, "timestamp") else mtime or 0)
