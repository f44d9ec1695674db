"""Real pictures for the emulator: a seeded, deterministic variation of the input image (not FLUX output).

Same input bytes + seed + index give identical output bytes; another seed gives another picture. Sizes
follow the model's presets; a side above ``max_side`` (4096 by default) is scaled down with the aspect
ratio kept, and the result reports the size actually made.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

import httpx
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from airflow_flux_redux.models import ImageSize

SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
DEFAULT_PRESET = "landscape_4_3"
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
_WORK_SIDE = 512


class InputImageError(Exception):
    """The input could not be fetched or decoded; the job fails as fal's would, with this error type."""

    def __init__(self, message: str, error_type: str = "file_download_error") -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    width: int
    height: int
    output_format: str

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.output_format]


def output_size(image_size: str | ImageSize | None, max_side: int) -> tuple[int, int]:
    """Pixel size for a preset name, an explicit {width, height} or None, capped at ``max_side``."""
    if image_size is None or isinstance(image_size, str):
        width, height = SIZE_PRESETS[image_size or DEFAULT_PRESET]
    else:
        width, height = image_size.width, image_size.height
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:`` URI (base64 or percent-encoded)."""
    header, _, payload = uri.partition(",")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise InputImageError(f"The input data URI is larger than {max_bytes} bytes")
    try:
        if header.lower().endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return unquote_to_bytes(payload)
    except ValueError as err:
        raise InputImageError(f"Could not decode the input data URI: {err}") from None


async def fetch_input(url: str, client: httpx.AsyncClient, max_bytes: int) -> bytes:
    """Download (or decode) the input image, refusing bodies above ``max_bytes``."""
    if url[:5].lower() == "data:":
        return await asyncio.to_thread(decode_data_uri, url, max_bytes)
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise InputImageError(f"Failed to download the input image: HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise InputImageError(f"The input image is larger than {max_bytes} bytes")
            return bytes(body)
    except httpx.HTTPError as err:
        raise InputImageError(f"Failed to download the input image: {type(err).__name__}: {err}") from None


def _open(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (_WORK_SIDE, _WORK_SIDE))  # JPEG decodes straight to a smaller scale
        image.load()
    except Image.DecompressionBombError as err:
        raise InputImageError(str(err), "image_too_large") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputImageError(f"The input is not a readable image: {err}") from None
    ImageOps.exif_transpose(image, in_place=True)
    return image.convert("RGB")


def _variation(source: Image.Image, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Crop, mirror, tilt, hue-rotate, re-tone and add grain: visibly related, visibly different.

    The work happens at most at ``_WORK_SIDE`` px and is scaled up at the end: a 1024x768 image costs
    a few milliseconds, which keeps a 10,000-job benchmark from being bound by the emulator's CPU.
    """
    scale = min(1.0, _WORK_SIDE / max(size))
    width, height = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    margin = (max(1, round(width * 1.1)), max(1, round(height * 1.1)))
    centering = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
    image = ImageOps.fit(source, margin, Image.Resampling.BILINEAR, centering=centering)
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = image.rotate(rng.uniform(-3.0, 3.0), Image.Resampling.BILINEAR)
    left, top = (margin[0] - width) // 2, (margin[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    shift = rng.randrange(256)
    hue, saturation, value = image.convert("HSV").split()
    hue = hue.point([(x + shift) % 256 for x in range(256)])
    image = Image.merge("HSV", (hue, saturation, value)).convert("RGB")
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.8, 1.3))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.85, 1.15))
    grain = Image.frombytes("L", (32, 32), rng.randbytes(32 * 32)).resize(image.size, Image.Resampling.BILINEAR)
    image = Image.blend(image, grain.convert("RGB"), 0.06)
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


def encode(image: Image.Image, output_format: str) -> bytes:
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, "PNG", compress_level=1)
    else:
        image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_variations(
    data: bytes, size: tuple[int, int], seed: int, count: int, output_format: str
) -> list[GeneratedImage]:
    """``count`` variations of the input; CPU-bound, so callers run it in a worker thread."""
    source = _open(data)
    source.thumbnail((_WORK_SIDE * 2, _WORK_SIDE * 2))  # huge inputs cost little more than small ones
    images = []
    for index in range(count):
        picture = _variation(source, size, random.Random(f"{seed}:{index}"))
        images.append(GeneratedImage(encode(picture, output_format), size[0], size[1], output_format))
    return images


def sample_image(width: int, height: int, output_format: str = "png") -> bytes:
    """A colourful gradient to use as an input image in tests and demos without the internet."""
    x = Image.linear_gradient("L").resize((width, height))
    y = x.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    disc = Image.radial_gradient("L").resize((width, height))
    return encode(Image.merge("RGB", (x, y, disc)), output_format)
