"""The waits' transport on real servers over loopback: aiohttp's keep-alive pool and streams, HTTP/2 by httpx.

The emulator (uvicorn for HTTP/1.1, hypercorn for HTTP/2) shows what a queue does; malformed answers are
in test_hostile_answers.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
from airflow_flux_redux.hooks import _transport
from airflow_flux_redux.hooks._settings import FluxReduxSettings
from airflow_flux_redux.hooks._transport import POLL_CONNECTIONS, StreamsBusyError, WaitSession, async_client
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


@pytest.fixture
async def waits_for() -> AsyncIterator[Callable[..., WaitSession]]:
    """A wait session on ``url`` (closed after the test)."""
    made: list[tuple[WaitSession, httpx.AsyncClient]] = []

    def make(url: str, **options: Any) -> WaitSession:
        settings = FluxReduxSettings(base_url=url, api_key=API_KEY, timeout=5.0, **options)
        client = async_client(settings)
        made.append((WaitSession(settings, client), client))
        return made[-1][0]

    yield make
    for session, client in made:
        await session.aclose()
        await client.aclose()


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


async def test_a_keepalive_the_server_dropped_is_replaced_once(waits_for) -> None:
    # The first connection answers once, then drops the next request unanswered (a keep-alive timeout racing
    # the request); the GET goes again on a fresh connection.
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                served += 1
                if served == 2:
                    break
                writer.write(ok)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    waits = waits_for(url)
    opened = counting_connections()
    assert (await waits.get(f"{url}/a")).content == b"ok"
    assert (await waits.get(f"{url}/b")).content == b"ok"
    assert opened() == 2
    server.close()


async def test_polls_a_thousand_times_over_a_few_keepalive_connections(waits_for) -> None:
    with EmulatorServer(EmulatorConfig(key=API_KEY, auth_scheme="Key", queue_seconds=0.5, run_seconds=5)) as server:
        handles = [submit(server) for _ in range(10)]
        waits = waits_for(server.url)
        opened = counting_connections()
        replies = await asyncio.gather(*(waits.get(h["status_url"]) for h in handles * 100))
        assert {json.loads(reply.content)["status"] for reply in replies} <= {"IN_QUEUE", "IN_PROGRESS"}
        assert {reply.headers["content-type"] for reply in replies} == {"application/json"}
        assert opened() <= POLL_CONNECTIONS
        assert server.stats(summary=True)["requests_by_route"]["status"] == 1000


async def test_streams_sse_and_the_cap_on_open_streams_holds_under_a_burst(waits_for, monkeypatch) -> None:
    config = EmulatorConfig(key=API_KEY, auth_scheme="Key", queue_seconds=0.05, run_seconds=1.0)
    with EmulatorServer(config) as server:
        handle = submit(server)
        waits = waits_for(server.url)
        monkeypatch.setattr(_transport, "MAX_STREAMS", 3)
        opened = counting_connections()
        entered = asyncio.Event()

        async def one() -> str:
            try:
                async with waits.stream(handle["status_url"] + "/stream", 10.0, limit=True) as response:
                    assert "text/event-stream" in response.headers["content-type"]
                    entered.set()
                    return (await read_all(response)).decode()
            except StreamsBusyError:
                return "busy"

        # Twenty waits start together: the cap is counted before any connect is awaited.
        outcomes = await asyncio.gather(*(one() for _ in range(20)))
        assert outcomes.count("busy") == 17
        assert all('"COMPLETED"' in text for text in outcomes if text != "busy")
        assert opened() == 3
        assert waits.streams == 0


# -- HTTP/2 (hypercorn, cleartext by prior knowledge) ----------------------------------------------------


async def test_h2_multiplexes_concurrent_polls_within_the_servers_stream_limit(h2_emulator, waits_for) -> None:
    h2_emulator.reset()
    handle = submit(h2_emulator, **{"x-emulator-run-seconds": "30"})
    waits = waits_for(h2_emulator.url, http2=True)
    opened = counting_connections()
    replies = await asyncio.gather(*(waits.get(handle["status_url"]) for _ in range(250)))
    assert {json.loads(reply.content)["request_id"] for reply in replies} == {handle["request_id"]}
    # Hypercorn allows 100 streams per connection: 250 requests at once need at most 3 connections.
    assert 1 <= opened() <= 3


async def test_h2_stream_reads_events_and_a_cancelled_stream_leaves_the_connection_usable(
    h2_emulator, waits_for
) -> None:
    h2_emulator.reset()
    long_job = submit(h2_emulator, **{"x-emulator-run-seconds": "30"})
    short_job = submit(h2_emulator)
    waits = waits_for(h2_emulator.url, http2=True)
    opened = counting_connections()
    async with waits.stream(long_job["status_url"] + "/stream", 10.0) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            assert b"data:" in chunk
            break  # leaving resets the stream; the job runs on
    async with waits.stream(short_job["status_url"] + "/stream", 10.0) as response:
        text = (await read_all(response)).decode()
    assert '"COMPLETED"' in text
    assert json.loads((await waits.get(long_job["status_url"])).content)["status"] == "IN_PROGRESS"
    assert opened() == 1


async def test_h2_connection_loss_fails_the_open_streams_with_an_httpx_error(waits_for) -> None:
    config = EmulatorConfig(key=API_KEY, auth_scheme="Key", queue_seconds=0.05, run_seconds=30)
    server = EmulatorServer(config, server="hypercorn", in_process=False).start()
    try:
        handle = submit(server)
        waits = waits_for(server.url, http2=True)
        async with waits.stream(handle["status_url"] + "/stream", 30.0) as response:
            reading = asyncio.ensure_future(read_all(response))
            await asyncio.sleep(0.3)
            await asyncio.to_thread(server.stop)
            with pytest.raises(httpx.TransportError) as caught:
                await asyncio.wait_for(reading, 8)
            assert not isinstance(caught.value, httpx.TimeoutException)  # failed by the loss, not its read timeout
    finally:
        server.stop()
