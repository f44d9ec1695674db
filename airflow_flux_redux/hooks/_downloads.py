"""Downloading output images: no credential ever, a size cap while streaming, a type check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_flux_redux.exceptions import FluxReduxProtocolError, FluxReduxTransportError

if TYPE_CHECKING:
    import httpx

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")


@dataclass
class ImageDownload:
    bytes_written: int
    content_type: str


class DownloadCheck:
    """Caps the size and checks the type of a downloaded image while it streams.

    Both halves of the cap are needed: a declared Content-Length over the cap is refused before a byte is
    read, and the streamed count stops a body that is chunked or understates its length.
    """

    def __init__(self, response: httpx.Response, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.written = 0
        self.content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code != 200:
            raise FluxReduxTransportError(
                f"image download from {response.url.host} answered HTTP {response.status_code}"
            )
        if self.content_type not in IMAGE_TYPES:
            raise FluxReduxProtocolError(
                f"image download from {response.url.host} sent Content-Type {self.content_type or 'none'!r}; "
                f"expected one of {', '.join(IMAGE_TYPES)}"
            )
        try:
            declared = int(response.headers.get("content-length") or 0)
        except ValueError:
            declared = 0  # a bad header; the streamed byte count still enforces the cap
        if declared > max_bytes:
            raise FluxReduxProtocolError(f"image at {response.url.host} is {declared} bytes; the cap is {max_bytes}")

    def chunk(self, data: bytes) -> bytes:
        self.written += len(data)
        if self.written > self.max_bytes:
            raise FluxReduxProtocolError(f"image download passed the cap of {self.max_bytes} bytes; stopped")
        return data

    def done(self) -> ImageDownload:
        return ImageDownload(bytes_written=self.written, content_type=self.content_type)
