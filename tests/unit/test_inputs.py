"""The input image: a file is sent only if it is a regular file whose bytes are an image, typed by those bytes."""

from __future__ import annotations

import base64
import io
import os
import threading
from typing import TYPE_CHECKING

import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath
from PIL import Image

from airflow_flux_redux import inputs
from airflow_flux_redux.exceptions import InvalidRequestError
from airflow_flux_redux.inputs import image_type, input_image_url

if TYPE_CHECKING:
    from pathlib import Path

MAX = 10 * 1024 * 1024
# An ftyp box as libavif writes it (major brand avif), and one naming avif only among its compatible brands.
AVIF = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00\x00\x00\x08meta" + bytes(32)
AVIF_COMPATIBLE = b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00avif" + bytes(32)
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1" + bytes(32)


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 60)).save(buffer, format=fmt)
    return buffer.getvalue()


def payload(uri: str) -> tuple[str, bytes]:
    header, _, data = uri.partition(",")
    return header, base64.b64decode(data)


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (encoded("PNG"), "image/png"),
        (encoded("JPEG"), "image/jpeg"),
        (encoded("WEBP"), "image/webp"),
        (encoded("GIF"), "image/gif"),
        (AVIF, "image/avif"),
        (AVIF_COMPATIBLE, "image/avif"),
    ],
)
def test_each_image_kind_is_typed_by_its_bytes_not_its_name(tmp_path: Path, data: bytes, content_type: str) -> None:
    path = tmp_path / "input.txt"  # a name that says nothing true about the bytes
    path.write_bytes(data)
    header, sent = payload(input_image_url(str(path), MAX))
    assert header == f"data:{content_type};base64"
    assert sent == data


def test_a_jpeg_named_png_goes_as_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(encoded("JPEG"))
    assert input_image_url(str(path), MAX).startswith("data:image/jpeg;base64,")


def test_file_uri_and_object_storage_path_are_read_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(encoded("PNG"))
    expected = input_image_url(str(path), MAX)
    assert input_image_url(f"file://{path}", MAX) == expected
    assert input_image_url(ObjectStoragePath(f"file://{path}"), MAX) == expected


def refused(value: str | ObjectStoragePath, match: str, max_bytes: int = MAX) -> str:
    with pytest.raises(InvalidRequestError, match=match) as raised:
        input_image_url(value, max_bytes)
    message = str(raised.value)
    assert "image_url:" in message
    assert "allowed: an http(s) URL, a data: URI" in message
    assert "PNG, JPEG, WebP, GIF or AVIF" in message
    return message


def test_a_config_file_is_refused_naming_the_field_and_path(tmp_path: Path) -> None:
    path = tmp_path / "airflow.cfg.png"
    path.write_text("[database]\nsql_alchemy_conn = postgresql://airflow:hunter2@db/airflow\n")
    message = refused(str(path), "is not an image")
    assert str(path) in message
    assert "hunter2" not in message


def test_the_process_environment_is_refused() -> None:
    message = refused("/proc/self/environ", "is not an image")
    assert "/proc/self/environ" in message


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    refused(str(path), "is empty")


def test_a_heic_file_is_not_taken_for_avif(tmp_path: Path) -> None:
    path = tmp_path / "x.avif"
    path.write_bytes(HEIC)
    refused(str(path), "is not an image")


def test_a_directory_is_refused(tmp_path: Path) -> None:
    refused(str(tmp_path), "is a directory, not a regular file")


def test_a_device_is_refused_even_behind_a_symlink(tmp_path: Path) -> None:
    refused("/dev/zero", "is a device, not a regular file")
    link = tmp_path / "innocent.png"
    link.symlink_to("/dev/zero")
    refused(str(link), "is a device, not a regular file")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []
    # Opened naively, a FIFO without a writer blocks for ever: run in a thread and give it a bounded time.
    thread = threading.Thread(target=lambda: outcome.append(_raised(str(fifo))), daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "opening the FIFO blocked"
    assert isinstance(outcome[0], InvalidRequestError)
    assert "is a FIFO, not a regular file" in str(outcome[0])


def _raised(value: str) -> BaseException:
    try:
        input_image_url(value, MAX)
    except BaseException as err:
        return err
    raise AssertionError("the FIFO was accepted")


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    refused(str(tmp_path / "nope.png"), "does not exist")


def test_a_file_over_the_cap_is_refused_after_reading_at_most_the_cap_plus_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(encoded("PNG") + bytes(5 * 1024 * 1024))
    read = 0
    real_read = os.read

    def counting_read(fd: int, size: int) -> bytes:
        nonlocal read
        data = real_read(fd, size)
        read += len(data)
        return data

    monkeypatch.setattr(inputs.os, "read", counting_read)
    refused(str(path), "is over 1000 bytes", max_bytes=1000)
    assert read <= 1001


@pytest.fixture
def memory_storage() -> None:
    """fsspec's in-memory filesystem as an object store (``memory://``), standing in for s3:// and the like."""
    import fsspec

    try:
        from airflow.sdk.io import attach
    except ImportError:  # Airflow 2
        from airflow.io.store import attach  # type: ignore[no-redef]
    attach(protocol="memory", fs=fsspec.filesystem("memory"))


@pytest.mark.usefixtures("memory_storage")
def test_object_storage_images_are_typed_and_other_files_refused() -> None:
    folder = ObjectStoragePath("memory://inputs-test/")
    folder.mkdir(parents=True, exist_ok=True)
    image, config = folder / "cat.bin", folder / "settings.png"
    image.write_bytes(encoded("WEBP"))
    config.write_bytes(b"AWS_SECRET_ACCESS_KEY=abc\n")
    assert input_image_url("memory://inputs-test/cat.bin", MAX).startswith("data:image/webp;base64,")
    assert input_image_url(image, MAX).startswith("data:image/webp;base64,")
    refused("memory://inputs-test/settings.png", "is not an image")
    refused("memory://inputs-test/missing.png", "does not exist")
    refused("memory://inputs-test", "is not a file")
    refused(folder / "cat.bin", "is over 10 bytes", max_bytes=10)


def test_urls_and_data_uris_pass_unchanged() -> None:
    assert input_image_url(" https://example.com/a.png ", MAX) == "https://example.com/a.png"
    assert input_image_url("data:image/png;base64,AAAA", MAX) == "data:image/png;base64,AAAA"


def test_a_remote_file_uri_host_is_refused() -> None:
    refused("file://otherhost/etc/passwd", "names a remote host")


def test_magic_bytes_need_the_whole_signature() -> None:
    assert image_type(b"\x89PNG\r\n\x1a") is None
    assert image_type(b"RIFF\x00\x00\x00\x00WAVE") is None
    assert image_type(b"GIF88a") is None
