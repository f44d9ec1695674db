"""The operator's input image: a URL or data: URI as is, a file read and sent inline only if its bytes are an image.

``image_url`` is templated, so a run's ``conf`` can name any path on the worker: a file is sent only when it is
a regular file whose first bytes are a PNG, JPEG, WebP, GIF or AVIF image, and its data: URI's type comes from
those bytes, never from the file name. Anything else is refused before any network call.
"""

from __future__ import annotations

import base64
import os
import stat
from typing import Any

from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_flux_redux.exceptions import InvalidRequestError

IMAGE_KINDS = "PNG, JPEG, WebP, GIF or AVIF"
_LOCAL_PROTOCOLS = frozenset({"file", "local"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


def image_type(head: bytes) -> str | None:
    """The content type an image's first bytes (at least 12, more for AVIF's brands) prove, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[4:8] == b"ftyp" and _avif_brand(head):
        return "image/avif"
    return None


def _avif_brand(head: bytes) -> bool:
    """An ISO-BMFF ``ftyp`` box naming avif/avis as its major brand or one of its compatible brands."""
    size = int.from_bytes(head[:4], "big")
    end = min(len(head), size if size >= 16 else 16)
    brands = [head[8:12]] + [head[offset : offset + 4] for offset in range(16, end - 3, 4)]
    return any(brand in _AVIF_BRANDS for brand in brands)


def input_image_url(value: str | ObjectStoragePath, max_bytes: int) -> str:
    """What to send as ``image_url``: an http(s) URL or data: URI unchanged, a file as an image data: URI."""
    if isinstance(value, str):
        text = value.strip()
        scheme = text.split("://", 1)[0].lower() if "://" in text else ""
        if scheme in ("http", "https") or text[:5].lower() == "data:" or not text:
            return text
        if not scheme or scheme in _LOCAL_PROTOCOLS:
            return data_uri(_read_local(_local_path(text), text, max_bytes), text)
        return data_uri(_read_storage(ObjectStoragePath(text), max_bytes), text)
    if getattr(value, "protocol", None) in _LOCAL_PROTOCOLS:
        return data_uri(_read_local(value.path, str(value), max_bytes), str(value))
    return data_uri(_read_storage(value, max_bytes), str(value))


def data_uri(data: bytes, shown: str) -> str:
    """``data`` as a data: URI typed by its own bytes, or ``InvalidRequestError`` when they are no image."""
    if not data:
        raise _refused(shown, "is empty")
    content_type = image_type(data[:64])
    if content_type is None:
        raise _refused(shown, f"is not an image (its first bytes are not those of a {IMAGE_KINDS} file)")
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def _local_path(text: str) -> str:
    if "://" in text:
        text = text.split("://", 1)[1]
        # file://host/path is not a local file; file:///path and file://localhost/path are.
        if text.startswith("localhost/"):
            text = text[len("localhost") :]
        elif not text.startswith("/"):
            raise _refused(f"file://{text}", "names a remote host; only local file:// paths are read")
    return os.path.abspath(text)


def _read_local(path: str, shown: str, max_bytes: int) -> bytes:
    """At most ``max_bytes`` + 1 bytes of a regular file; the type is checked on the opened descriptor.

    ``O_NONBLOCK`` keeps a FIFO from blocking the open; ``fstat`` on the descriptor (not ``stat`` on the name)
    means a file swapped for a device or FIFO after the check is never read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _refused(shown, "does not exist") from None
    except OSError as err:
        raise _refused(shown, f"cannot be opened ({err.strerror or type(err).__name__})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refused(shown, f"is a {_kind(mode)}, not a regular file")
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    return _capped(b"".join(chunks), shown, max_bytes)


def _read_storage(path: Any, max_bytes: int) -> bytes:
    """At most ``max_bytes`` + 1 bytes of an object-storage file (no devices or FIFOs exist there)."""
    shown = str(path)
    if not path.exists():
        raise _refused(shown, "does not exist")
    if not path.is_file():
        raise _refused(shown, "is not a file")
    with path.open("rb") as source:
        return _capped(source.read(max_bytes + 1), shown, max_bytes)


def _capped(data: bytes, shown: str, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise _refused(
            shown,
            f"is over {max_bytes} bytes, the most sent inline (max_input_bytes); upload it somewhere and pass its "
            "https URL instead",
        )
    return data


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _refused(shown: str, why: str) -> InvalidRequestError:
    return InvalidRequestError(
        [
            f"image_url: {shown} {why}; allowed: an http(s) URL, a data: URI, or a regular file (local or object "
            f"storage) holding a {IMAGE_KINDS} image of at most max_input_bytes"
        ]
    )
