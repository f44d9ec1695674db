"""The status stream (``{status_url}/stream``, Server-Sent Events): opening it, reading its statuses, and the
one probe per origin that finds out whether it is served."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import TYPE_CHECKING

import httpx
from pydantic import ValidationError

from airflow_flux_redux.exceptions import FluxReduxProtocolError
from airflow_flux_redux.hooks._answers import raise_for_status
from airflow_flux_redux.hooks._transport import ASYNC_CLIENTS, StreamsBusyError
from airflow_flux_redux.models import QueueState, QueueStatus
from airflow_flux_redux.wait import StreamUnsupportedError, WaitPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from airflow_flux_redux.hooks._settings import FluxReduxSettings


def stream_url(status_url: str) -> str:
    return f"{status_url.split('?')[0].rstrip('/')}/stream"


def _not_served(response: httpx.Response) -> bool:
    """A gateway without the stream answers some 4xx or 501; 401, 403, 408 and 429 mean what they say."""
    code = response.status_code
    if (400 <= code < 500 and code not in (401, 403, 408, 429)) or code == 501:
        return True
    return code < 300 and "text/event-stream" not in response.headers.get("content-type", "")


async def read_statuses(response: httpx.Response, request_id: str) -> AsyncIterator[QueueStatus]:
    """The statuses a stream answer carries, ending after COMPLETED."""
    from httpx_sse import EventSource

    if _not_served(response):
        raise StreamUnsupportedError(f"HTTP {response.status_code}", request_id=request_id)
    if response.status_code >= 300:
        await response.aread()
        raise_for_status(response, "status stream", request_id)
    async for event in EventSource(response).aiter_sse():
        if not event.data:
            continue
        try:
            status = QueueStatus.model_validate_json(event.data)
        except ValidationError as err:
            raise FluxReduxProtocolError(
                f"status stream sent an event that is not a queue status: {err.errors()[0]['msg']}",
                request_id=request_id,
            ) from None
        yield status
        if status.status is QueueState.COMPLETED:
            return


@contextlib.asynccontextmanager
async def open_stream(
    settings: FluxReduxSettings, url: str, fallback_when_busy: bool = False
) -> AsyncIterator[httpx.Response]:
    """The stream's response, on a connection of its own to our origin (else through the client).

    A stream holds its HTTP/1.1 connection for the whole wait: through a shared pool, the streams past its
    connection limit would queue behind the others for the length of a job.
    """
    read_timeout = max(60.0, settings.timeout)
    if not settings.same_origin(url):
        client, _ = ASYNC_CLIENTS.get(settings)
        timeout = httpx.Timeout(settings.timeout, read=read_timeout)
        async with client.stream("GET", url, headers={"Accept": "text/event-stream"}, timeout=timeout) as response:
            yield response
        return
    waits = ASYNC_CLIENTS.entry(settings).waits
    try:
        async with waits.stream(url, read_timeout, limit=fallback_when_busy) as response:
            yield response
    except StreamsBusyError as err:
        hint = '; the connection extra "http2": true multiplexes streams'
        raise StreamUnsupportedError(f"{err}{hint}", busy=True) from None


# Per event loop and origin: the one ``auto`` wait finding out whether the origin serves the status stream.
_PROBES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future[bool | None]]] = (
    weakref.WeakKeyDictionary()
)


async def stream_probe(policy: WaitPolicy) -> asyncio.Future[bool | None] | None:
    """Single flight: the first ``auto`` wait on an unknown origin tries the stream (it gets the future to
    settle); the others wait for its answer instead of each opening a connection a relay would refuse."""
    policy.refresh()  # a settled probe is forgotten: what it found is in the policy's per-origin sets
    if not policy.must_probe:
        return None
    loop = asyncio.get_running_loop()
    while True:
        probes = _PROBES.setdefault(loop, {})
        pending = probes.get(policy.origin)  # settled ones are gone (``settle_probe``)
        if pending is None:
            probe = probes[policy.origin] = loop.create_future()
            return probe
        await asyncio.shield(pending)
        policy.refresh()
        if not policy.must_probe:
            return None


def settle_probe(origin: str, probe: asyncio.Future[bool | None], served: bool | None) -> None:
    """Tell the waits on ``probe`` what its wait found (None: nothing; the next wait probes again), once, and
    forget it: what was found lives on in the wait policy's per-origin sets, and a future kept here would keep
    its event loop (and that loop's clients) alive after the loop ends."""
    if probe.done():
        return
    probe.set_result(served)
    loop = probe.get_loop()
    probes = _PROBES.get(loop, {})
    if probes.get(origin) is probe:
        del probes[origin]
        if not probes:
            del _PROBES[loop]
