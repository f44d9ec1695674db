"""A gateway is a third-party server: whatever bytes it sends, a call ends within its timeout with our error.

A raw asyncio server of the tests answers every request with exact bytes: the malformed framings seen in
the wild and in request-smuggling attacks, answers dripped a byte at a time, and well-formed controls that
must be read as a status. Each case runs through the sync hook (httpx) and the async hook's waits
(aiohttp), with a heartbeat task in the same loop that measures how long the loop ever stalls.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_flux_redux.exceptions import FluxReduxError, FluxReduxProtocolError, FluxReduxTransportError
from airflow_flux_redux.hooks._settings import FluxReduxSettings
from airflow_flux_redux.hooks.flux_redux import ASYNC_CLIENTS, FluxReduxAsyncHook, FluxReduxHook
from airflow_flux_redux.models import QueueHandle, QueueState
from tests.conftest import API_KEY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

STATUS = json.dumps({"status": "COMPLETED", "logs": [], "metrics": {}}).encode()
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


def chunked(size: bytes) -> bytes:
    return HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + STATUS + b"\r\n0\r\n\r\n"


LENGTH = str(len(STATUS)).encode()
MALFORMED = {
    "negative chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\n-5\r\n" + STATUS + b"\r\n0\r\n\r\n",
    "two Content-Length values": HEAD + b"Content-Length: " + LENGTH + b"\r\nContent-Length: 5\r\n\r\n" + STATUS,
    "space before the colon": HEAD + b"Content-Length : " + LENGTH + b"\r\n\r\n" + STATUS,
    "Transfer-Encoding xchunked": HEAD.replace(b"200 OK", b"200 OK")
    + b"Transfer-Encoding: xchunked\r\n\r\n"
    + hex(len(STATUS))[2:].encode()
    + b"\r\n"
    + STATUS
    + b"\r\n0\r\n\r\n",
    "chunk size 0x28": chunked(b"0x" + hex(len(STATUS))[2:].encode()),
    "status code 2000": HEAD.replace(b"200 OK", b"2000 OK") + b"Content-Length: " + LENGTH + b"\r\n\r\n" + STATUS,
}
WELL_FORMED = {
    "Content-Length": HEAD + b"Content-Length: " + LENGTH + b"\r\n\r\n" + STATUS,
    "chunked": chunked(hex(len(STATUS))[2:].encode()),
}
TIMEOUT = 2.0
# A read that blocked the event loop on a hostile answer would stall it for about TIMEOUT; a loaded machine's
# own hiccups (the suites run beside the deployments) stay far below this.
STALLED = TIMEOUT / 4


class RawServer:
    """Answers every request on 127.0.0.1 with ``answer`` (bytes, or a list of pieces sent ``gap`` s apart)."""

    def __init__(self) -> None:
        self.answer: bytes = b""
        self.gap = 0.0
        self.drip_from = 0  # the bytes before this offset go at once
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if self.gap:
                    writer.write(self.answer[: self.drip_from])
                    for byte in self.answer[self.drip_from :]:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(self.gap)
                else:
                    writer.write(self.answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


def settings_for(url: str) -> FluxReduxSettings:
    return FluxReduxSettings(base_url=url, api_key=API_KEY, timeout=TIMEOUT, max_retries=0)


def handle_on(url: str) -> QueueHandle:
    base = f"{url}/fal-ai/flux-1/requests/r1"
    return QueueHandle(request_id="r1", status_url=f"{base}/status", response_url=base, cancel_url=f"{base}/cancel")


class Heartbeat:
    """Ticks every 10 ms in the test's loop; ``worst`` is the longest the loop ever kept it waiting."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.01)
            last = now

    async def longest_stall(self) -> float:
        """``worst``, once the ticker has had its turn (a stall that just ended is counted)."""
        await asyncio.sleep(0.03)
        return self.worst


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[RawServer, str, Heartbeat]]:
    raw = RawServer()
    url = await raw.start()
    beat = Heartbeat()
    ticker = asyncio.create_task(beat.run())
    yield raw, url, beat
    ticker.cancel()
    await ASYNC_CLIENTS.aclose()
    assert raw.server is not None
    raw.server.close()


async def async_status(url: str) -> Any:
    hook = FluxReduxAsyncHook()
    hook.use_settings(settings_for(url))
    return await hook.status(handle_on(url), logs=False)


def sync_status(url: str) -> Any:
    hook = FluxReduxHook()
    hook.use_settings(settings_for(url))
    try:
        return hook.status(handle_on(url), logs=False)
    finally:
        hook.close()


async def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        outcome = await call()
    except FluxReduxError as err:
        outcome = err
    return time.monotonic() - started, outcome


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_framing_is_refused_within_the_timeout_and_the_loop_keeps_ticking(gateway, case) -> None:
    raw, url, beat = gateway
    raw.answer = MALFORMED[case]
    took, outcome = await timed(lambda: async_status(url))
    assert isinstance(outcome, FluxReduxTransportError | FluxReduxProtocolError), outcome
    assert took < TIMEOUT + 0.5
    assert await beat.longest_stall() < STALLED
    took, outcome = await timed(lambda: asyncio.to_thread(sync_status, url))
    assert isinstance(outcome, FluxReduxTransportError | FluxReduxProtocolError), outcome
    assert took < TIMEOUT + 0.5
    assert await beat.longest_stall() < STALLED


@pytest.mark.parametrize("case", list(WELL_FORMED))
async def test_well_formed_answers_are_read_as_the_status(gateway, case) -> None:
    raw, url, beat = gateway
    raw.answer = WELL_FORMED[case]
    assert (await async_status(url)).status is QueueState.COMPLETED
    assert (await asyncio.to_thread(sync_status, url)).status is QueueState.COMPLETED
    assert await beat.longest_stall() < STALLED


async def test_an_answer_dripped_a_byte_at_a_time_ends_within_the_calls_timeout(gateway) -> None:
    raw, url, beat = gateway
    raw.answer, raw.gap = WELL_FORMED["Content-Length"], 0.05  # ~8 s in all, every read well within the timeout
    took, outcome = await timed(lambda: async_status(url))
    assert isinstance(outcome, FluxReduxTransportError) and "timeout" in str(outcome)
    assert took < TIMEOUT + 0.5
    assert await beat.longest_stall() < STALLED


async def test_the_sync_hook_bounds_a_dripped_body_by_the_calls_timeout(gateway) -> None:
    raw, url, _ = gateway
    body = b"{" + b" " * 200 + STATUS[1:]
    head = HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode()
    raw.answer, raw.gap, raw.drip_from = head + body, 0.05, len(head)
    took, outcome = await timed(lambda: asyncio.to_thread(sync_status, url))
    assert isinstance(outcome, FluxReduxTransportError) and "timeout" in str(outcome)
    assert took < TIMEOUT + 1.0
