"""Both halves of the download cap, each on its own: the declared Content-Length and the streamed byte count.

Each test here fails when one half is removed: a declared length over the cap is refused before a byte is
written; a chunked body (no length) and a body longer than its declared length are stopped by the count.
"""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import httpx
import pytest

from airflow_flux_redux.exceptions import FluxReduxProtocolError
from airflow_flux_redux.hooks.flux_redux import FluxReduxHook
from tests.integration.test_hook import submit_and_wait

if TYPE_CHECKING:
    from collections.abc import Iterator

CAP = 1_000_000
BODY = 8_000_000
CHUNK = 64 * 1024


class _ChunkedImage(BaseHTTPRequestHandler):
    """A CDN that streams an image with ``Transfer-Encoding: chunked``: no length is declared at all."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for _ in range(BODY // CHUNK):
                self.wfile.write(b"%x\r\n%s\r\n" % (CHUNK, bytes(CHUNK)))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped at its cap, as it should

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def chunked_cdn() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedImage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/image.png"
    finally:
        server.shutdown()
        server.server_close()


def test_a_declared_length_over_the_cap_is_refused_before_a_byte_is_written(flux_conn, image_uri) -> None:
    hook = FluxReduxHook()
    _, result = submit_and_wait(hook, image_uri)
    flux_conn.set_faults([{"route": "file", "kind": "huge_file", "bytes": BODY}])
    sink = io.BytesIO()
    with pytest.raises(FluxReduxProtocolError, match=f"is {BODY} bytes; the cap is {CAP}"):
        hook.download(result.images[0].url, sink, max_bytes=CAP)
    assert sink.tell() == 0


def test_a_chunked_body_without_a_length_is_stopped_at_the_cap(flux_conn, chunked_cdn: str) -> None:
    sink = io.BytesIO()
    with pytest.raises(FluxReduxProtocolError, match=f"passed the cap of {CAP} bytes"):
        FluxReduxHook().download(chunked_cdn, sink, max_bytes=CAP)
    assert sink.tell() <= CAP


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
