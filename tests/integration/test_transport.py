"""The waits' transport on real servers over loopback: the HTTP/1.1 connection, the lane, the HTTP/2 client.

The emulator (uvicorn for HTTP/1.1, hypercorn for HTTP/2) shows what a queue does; a raw asyncio server
sends the exact bytes the HTTP/1.1 reader must survive (framings, interim answers, closes, garbage).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
from airflow_flux_redux.hooks import _transport
from airflow_flux_redux.hooks._http1 import Http1Connection, request_bytes
from airflow_flux_redux.hooks._settings import FluxReduxSettings
from airflow_flux_redux.hooks._transport import HTTP1_CONNECTIONS, StreamsBusyError, _Lane
from tests.conftest import API_KEY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

ENDPOINT = "fal-ai/flux-1/schnell/redux"


def submit(server: EmulatorServer, **headers: str) -> dict[str, Any]:
    answer = httpx.post(
        f"{server.url}/{ENDPOINT}",
        json={"image_url": server.sample_image_url(32, 32)},
        headers={"Authorization": f"Key {API_KEY}", **headers},
    )
    answer.raise_for_status()
    return answer.json()


def lane_for(url: str, **settings: Any) -> _Lane:
    return _Lane(FluxReduxSettings(base_url=url, api_key=API_KEY, timeout=5.0, **settings))


async def read_all(response: httpx.Response) -> bytes:
    return b"".join([chunk async for chunk in response.aiter_raw()])


def counting_connections() -> Callable[[], int]:
    """Count the TCP connections this loop opens from now on."""
    loop = asyncio.get_running_loop()
    create_connection = loop.create_connection
    opened = 0

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += 1
        return await create_connection(*args, **kwargs)

    loop.create_connection = counted  # type: ignore[method-assign]
    return lambda: opened


@pytest.fixture(scope="module")
def h2_emulator() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(key=API_KEY, auth_scheme="Key", queue_seconds=0.05, run_seconds=0.3, log_lines=2)
    with EmulatorServer(config, server="hypercorn") as server:
        yield server


# -- a raw server: exact bytes per request ------------------------------------------------------------------


async def raw_server(answers: list[bytes | None]) -> tuple[str, asyncio.AbstractServer]:
    """Answers the n-th request (across connections) with ``answers[n]``; None closes without a word."""
    pending = list(answers)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while pending:
                await reader.readuntil(b"\r\n\r\n")
                answer = pending.pop(0)
                if answer is None:
                    break
                for piece in (answer[: len(answer) // 2], answer[len(answer) // 2 :]):  # two TCP segments
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


@pytest.fixture
async def raw() -> AsyncIterator[Callable[[list[bytes | None]], Any]]:
    servers: list[asyncio.AbstractServer] = []

    async def start(answers: list[bytes | None]) -> str:
        url, server = await raw_server(answers)
        servers.append(server)
        return url

    yield start
    for server in servers:
        server.close()


async def get_on(url: str) -> tuple[int, bytes, bool]:
    host, port = url.removeprefix("http://").split(":")
    conn = await Http1Connection.open(host, int(port), ssl_context=None, timeout=5)
    try:
        status, _, content = await conn.get(request_bytes(b"/x", b"Host: test\r\n"), 5)
        return status, content, conn.reusable
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("answer", "body", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", b"hello world", True),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            b"hello world",
            True,
        ),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", True),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", b"ok", False),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", b"until the end", False),
    ],
    ids=["content-length", "chunked+trailer", "interim-103", "no-content", "connection-close", "close-delimited"],
)
async def test_http1_reads_every_framing_and_knows_when_it_may_reuse(raw, answer, body, reusable) -> None:
    status, content, may_reuse = await get_on(await raw([answer]))
    assert (status, content, may_reuse) == (204 if answer.startswith(b"HTTP/1.1 204") else 200, body, reusable)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", httpx.RemoteProtocolError),
        (None, httpx.RemoteProtocolError),
    ],
    ids=["not-http", "truncated", "bad-chunk-size", "bad-header", "closed"],
)
async def test_http1_bad_answers_raise_httpx_transport_errors(raw, answer, error) -> None:
    with pytest.raises(error):
        await get_on(await raw([answer]))


async def test_http1_silent_server_times_out_and_closed_port_fails_to_connect(raw) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = await Http1Connection.open("127.0.0.1", port, ssl_context=None, timeout=5)
    with pytest.raises(httpx.ReadTimeout):
        await conn.get(request_bytes(b"/", b"Host: test\r\n"), 0.2)
    conn.close()
    server.close()
    await server.wait_closed()
    with pytest.raises(httpx.ConnectError):
        await Http1Connection.open("127.0.0.1", port, ssl_context=None, timeout=5)


async def test_lane_replaces_a_keepalive_the_server_dropped_once(raw) -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    # The first connection answers once, then drops the second request unanswered (a keep-alive timeout
    # racing the request); the lane sends it again on a fresh connection.
    url = await raw([ok, None, ok])
    lane = lane_for(url)
    opened = counting_connections()
    assert (await lane.get(f"{url}/a")).content == b"ok"
    assert (await lane.get(f"{url}/b")).content == b"ok"
    assert opened() == 2
    await lane.aclose()


async def test_lane_polls_a_thousand_times_over_its_few_keepalive_connections() -> None:
    with EmulatorServer(EmulatorConfig(key=API_KEY, auth_scheme="Key", queue_seconds=0.5, run_seconds=5)) as server:
        handles = [submit(server) for _ in range(10)]
        lane = lane_for(server.url)
        opened = counting_connections()
        replies = await asyncio.gather(*(lane.get(h["status_url"]) for h in handles * 100))
        assert {json.loads(reply.content)["status"] for reply in replies} <= {"IN_QUEUE", "IN_PROGRESS"}
        assert {reply.headers["content-type"] for reply in replies} == {"application/json"}
        assert opened() <= HTTP1_CONNECTIONS
        assert server.stats(summary=True)["requests_by_route"]["status"] == 1000
        await lane.aclose()


async def test_lane_streams_sse_on_http1_and_bounds_open_streams(monkeypatch) -> None:
    with EmulatorServer(EmulatorConfig(key=API_KEY, auth_scheme="Key", queue_seconds=0.05, run_seconds=0.3)) as server:
        handle = submit(server)
        lane = lane_for(server.url)
        monkeypatch.setattr(_transport, "MAX_HTTP1_STREAMS", 1)
        async with lane.stream(handle["status_url"] + "/stream", 10.0, limit_http1=True) as response:
            assert response.status_code == 200
            assert "text/event-stream" in response.headers["content-type"]
            with pytest.raises(StreamsBusyError):
                async with lane.stream(handle["status_url"] + "/stream", 10.0, limit_http1=True):
                    pass
            text = (await read_all(response)).decode()
        assert '"COMPLETED"' in text
        await lane.aclose()


# -- HTTP/2 (hypercorn, cleartext by prior knowledge) ----------------------------------------------------


async def test_h2_multiplexes_concurrent_polls_within_the_servers_stream_limit(h2_emulator) -> None:
    h2_emulator.reset()
    handle = submit(h2_emulator, **{"x-emulator-run-seconds": "30"})
    lane = lane_for(h2_emulator.url, http2=True)
    opened = counting_connections()
    replies = await asyncio.gather(*(lane.get(handle["status_url"]) for _ in range(250)))
    assert {json.loads(reply.content)["request_id"] for reply in replies} == {handle["request_id"]}
    # Hypercorn allows 100 streams per connection: 250 requests at once need at most 3 connections.
    assert 1 <= opened() <= 3
    await lane.aclose()


async def test_h2_stream_reads_events_and_a_cancelled_stream_leaves_the_connection_usable(h2_emulator) -> None:
    h2_emulator.reset()
    long_job = submit(h2_emulator, **{"x-emulator-run-seconds": "30"})
    short_job = submit(h2_emulator)
    lane = lane_for(h2_emulator.url, http2=True)
    opened = counting_connections()
    async with lane.stream(long_job["status_url"] + "/stream", 10.0) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            assert b"data:" in chunk
            break  # leaving resets the stream; the job runs on
    async with lane.stream(short_job["status_url"] + "/stream", 10.0) as response:
        text = (await read_all(response)).decode()
    assert '"COMPLETED"' in text
    assert json.loads((await lane.get(long_job["status_url"])).content)["status"] == "IN_PROGRESS"
    assert opened() == 1
    await lane.aclose()


async def test_h2_connection_loss_fails_the_open_streams_with_an_httpx_error() -> None:
    config = EmulatorConfig(key=API_KEY, auth_scheme="Key", queue_seconds=0.05, run_seconds=30)
    server = EmulatorServer(config, server="hypercorn", in_process=False).start()
    try:
        handle = submit(server)
        lane = lane_for(server.url, http2=True)
        async with lane.stream(handle["status_url"] + "/stream", 30.0) as response:
            reading = asyncio.ensure_future(read_all(response))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.stop)
            with pytest.raises(httpx.TransportError) as caught:
                await asyncio.wait_for(reading, 8)
            assert not isinstance(caught.value, httpx.TimeoutException)  # failed by the loss, not its read timeout
        await lane.aclose()
    finally:
        server.stop()
