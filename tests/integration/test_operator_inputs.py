"""The operator's input file against the emulator: what reaches the server, and what never leaves the worker."""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

import pytest

from airflow_flux_redux.emulator.images import sample_image
from airflow_flux_redux.exceptions import InvalidRequestError
from tests.conftest import context
from tests.integration.test_operator import operator

if TYPE_CHECKING:
    from pathlib import Path


def test_a_jpeg_named_png_reaches_the_server_as_a_jpeg_data_uri(flux_conn, tmp_path: Path) -> None:
    data = sample_image(40, 30, "jpeg")
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    result = operator(image_url=str(path), deferrable=False).execute(context())
    sent = f"data:image/jpeg;base64,{base64.b64encode(data).decode()}"
    assert flux_conn.stats()["submissions_by_image_url"] == {hashlib.sha256(sent.encode()).hexdigest()[:16]: 1}
    assert result["images"]


@pytest.mark.parametrize("value", ["/proc/self/environ", "/dev/zero", "/etc/passwd", "/tmp"])
def test_a_file_that_is_no_image_is_refused_before_any_network_call(flux_conn, value: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"image_url: {value} "):
        operator(image_url=value).execute(context())
    assert sum(flux_conn.stats()["requests_by_route"].values()) == 0
