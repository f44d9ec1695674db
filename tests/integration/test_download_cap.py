"""Both halves of the download cap, each on its own: the declared Content-Length and the streamed byte count.

Each test here fails when one half is removed: a declared length over the cap is refused before a byte is
written; a chunked body (no length, from the emulator) and a body longer than its declared length (which no
real server can send through h11, so a mock transport) are stopped by the count.
"""

from __future__ import annotations

import io

import httpx
import pytest

from airflow_flux_redux.exceptions import FluxReduxProtocolError
from airflow_flux_redux.hooks.flux_redux import FluxReduxHook
from tests.integration.test_hook import submit_and_wait

CAP = 1_000_000
BODY = 8_000_000
CHUNK = 64 * 1024


@pytest.mark.parametrize(
    ("kind", "message", "most_written"),
    [
        # A declared length over the cap is refused before a byte is written.
        ("huge_file", f"is {BODY} bytes; the cap is {CAP}", 0),
        # With no length declared, the streamed count stops the body at the cap.
        ("huge_chunked_file", f"passed the cap of {CAP} bytes", CAP),
    ],
    ids=["declared-length", "chunked-no-length"],
)
def test_an_image_over_the_cap_is_stopped(flux_conn, image_uri, kind: str, message: str, most_written: int) -> None:
    hook = FluxReduxHook()
    _, result = submit_and_wait(hook, image_uri)
    flux_conn.set_faults([{"route": "file", "kind": kind, "bytes": BODY}])
    sink = io.BytesIO()
    with pytest.raises(FluxReduxProtocolError, match=message):
        hook.download(result.images[0].url, sink, max_bytes=CAP)
    assert sink.tell() <= most_written


def test_a_body_longer_than_its_declared_length_is_stopped_at_the_cap(flux_conn) -> None:
    # A real server cannot send more than it declares through h11; only a mock transport can.
    def understating(request: httpx.Request) -> httpx.Response:
        body = (bytes(CHUNK) for _ in range(BODY // CHUNK))
        return httpx.Response(200, headers={"Content-Type": "image/png", "Content-Length": "1000"}, content=body)

    hook = FluxReduxHook()
    hook._files = httpx.Client(transport=httpx.MockTransport(understating))
    sink = io.BytesIO()
    with pytest.raises(FluxReduxProtocolError, match=f"passed the cap of {CAP} bytes"):
        hook.download("https://cdn.example.com/image.png", sink, max_bytes=CAP)
    assert sink.tell() <= CAP
