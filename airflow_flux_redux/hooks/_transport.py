"""The hook's HTTP clients: httpx for calls, aiohttp for the waits' GETs; pooled per event loop.

Its own module because it is a concern of its own. Submit, cancel, URLs on other trusted origins, image
downloads and the whole sync hook use httpx. The waits' GETs on the connection's own origin (status polls,
results, status streams) use one shared aiohttp session per loop and connection: its C parser (llhttp)
costs a third of what httpx's pure-Python stack costs per poll (benchmarks/README.md), and it refuses
malformed framing just as strictly. With the connection extra ``http2`` the waits use httpx's HTTP/2
(``h2``) instead. Every request goes through the proxy ``_proxy`` picks, and every call is bounded as a
whole by the connection's ``timeout`` (connect, send, and the whole answer), not per read. Everything here
returns raw answers or raises the clients' own errors; the hook reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx

from airflow_flux_redux.hooks._proxy import AsyncProxyTransport, ProxyRoutes, ProxyTransport
from airflow_flux_redux.hooks._settings import _SETTINGS_CACHE
from airflow_flux_redux.hooks._tls import ssl_context

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Generator, Mapping

    from airflow_flux_redux.hooks._settings import FluxReduxSettings

# The waits' keep-alive pool for polls: enough for a thousand polls a second on loopback or across a region,
# and each open connection costs the server a socket.
POLL_CONNECTIONS = 32
# Each HTTP/1.1 status stream holds a connection of its own: past this many, ``auto`` waits poll instead.
MAX_STREAMS = 256
# The most a status or result answer may hold (a sync_mode result carries its images inline).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
HEADERS = {"User-Agent": "airflow-flux-redux", "Accept": "application/json"}


class StreamsBusyError(Exception):
    """Every status-stream connection the transport allows is in use."""


class MalformedAnswerError(Exception):
    """An answer the waits' transport refuses to read."""


class AnswerTooLargeError(MalformedAnswerError):
    """An answer longer than ``MAX_ANSWER_BYTES``: refused before it fills the memory."""


# What a call may raise for a network failure or a malformed answer (the hook makes them ours).
TRANSPORT_ERRORS = (httpx.HTTPError, aiohttp.ClientError, TimeoutError, MalformedAnswerError)


# RFC 9110's token: what a header name may be. aiohttp parses answers leniently outside Python's dev mode
# (``Content-Length : 5`` is read as a length); a gateway that sends a name outside the grammar is refused.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_header_names(answer: aiohttp.ClientResponse) -> None:
    for name, _ in answer.raw_headers:
        if not _TOKEN.fullmatch(name):
            raise MalformedAnswerError(f"the answer has a malformed header name {name[:40]!r}")


class _OriginAuth(httpx.Auth):
    """Adds the key only to requests on a trusted origin: a last guard under ``require_trusted``."""

    def __init__(self, settings: FluxReduxSettings) -> None:
        self._settings = settings

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._settings.trusts(request.url):
            request.headers["Authorization"] = self._settings.authorization
        yield request


def _transport_options(settings: FluxReduxSettings, proxy: str | None, *, calls: bool = True) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=settings.max_in_flight, max_keepalive_connections=settings.max_in_flight)
    options = {"verify": ssl_context(), "limits": limits, "trust_env": False, "proxy": proxy}
    if calls and settings.http2:
        # https negotiates HTTP/2 by ALPN; a cleartext base URL means HTTP/2 by prior knowledge (h2c).
        options.update(http2=True, http1=settings.origin[0] == "https")
    return options


def _calls_kwargs(settings: FluxReduxSettings) -> dict[str, Any]:
    return {
        "auth": _OriginAuth(settings),
        "headers": HEADERS,
        "timeout": httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
        "follow_redirects": False,
        "trust_env": False,
    }


def sync_client(settings: FluxReduxSettings) -> httpx.Client:
    """The sync hook's client: the key only to trusted origins, no redirects, each origin through its proxy."""
    routes = ProxyRoutes(
        settings.proxy_for,
        lambda proxy: httpx.HTTPTransport(**_transport_options(settings, proxy)),
    )
    return httpx.Client(transport=ProxyTransport(routes), **_calls_kwargs(settings))


def async_client(settings: FluxReduxSettings) -> httpx.AsyncClient:
    routes = ProxyRoutes(
        settings.proxy_for,
        lambda proxy: httpx.AsyncHTTPTransport(**_transport_options(settings, proxy)),
    )
    return httpx.AsyncClient(transport=AsyncProxyTransport(routes), **_calls_kwargs(settings))


def files_client(settings: FluxReduxSettings) -> httpx.Client:
    """Image downloads: no credential at all (images live on a CDN); redirects followed; through the proxy."""
    routes = ProxyRoutes(
        settings.proxy_for, lambda proxy: httpx.HTTPTransport(**_transport_options(settings, proxy, calls=False))
    )
    return httpx.Client(
        transport=ProxyTransport(routes),
        timeout=httpx.Timeout(max(60.0, settings.timeout), connect=10.0),
        follow_redirects=True,
        max_redirects=5,
        headers={"User-Agent": "airflow-flux-redux"},
        trust_env=False,
    )


def send_within(client: httpx.Client, request: httpx.Request, timeout: float) -> httpx.Response:
    """Send ``request`` and read its answer, the body within ``timeout`` of the start as a whole.

    httpx bounds each read, not the call: an answer dripped a byte at a time would hold the sync hook for
    ever. The body is read as it comes and the call ends once the time is up.
    """
    deadline = time.monotonic() + timeout
    response = client.send(request, stream=True)
    try:
        raw: list[bytes] = []
        size = 0
        for chunk in response.iter_raw():
            size += len(chunk)
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout(f"the answer took longer than the call's timeout of {timeout:g}s")
            if size > MAX_ANSWER_BYTES:
                raise httpx.ReadError(f"the answer passed the cap of {MAX_ANSWER_BYTES} bytes")
            raw.append(chunk)
    finally:
        response.close()
    answer = httpx.Response(
        response.status_code, headers=response.headers, stream=httpx.ByteStream(b"".join(raw)), request=request
    )
    answer.read()  # decodes a Content-Encoding as httpx would
    return answer


class Reply:
    """A wholly read answer of the waits' transport: what ``_answers`` and the models read of a response."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Body(httpx.AsyncByteStream):
    """An aiohttp answer's body, read as it comes, as an httpx stream (``httpx-sse`` reads the events)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.content.iter_any():
            yield chunk


class WaitSession:
    """The waits' GETs on the connection's own origin: polls and results on a small keep-alive pool, status
    streams each on a connection of their own, at most ``MAX_STREAMS`` at once (counted before connecting,
    so a burst of waits starting together cannot pass the cap).

    Built on aiohttp; with ``http2`` the same calls go through the httpx client's HTTP/2 instead.
    """

    def __init__(self, settings: FluxReduxSettings, client: httpx.AsyncClient) -> None:
        self._client = client
        self.http2 = settings.http2
        self.timeout = settings.timeout
        self._proxy = settings.proxy_for(settings.base_url)
        self.streams = 0
        headers = {**HEADERS, "Authorization": settings.authorization}
        connect = min(10.0, settings.timeout)
        self._polls = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=min(POLL_CONNECTIONS, settings.max_in_flight), ssl=ssl_context()),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=settings.timeout, connect=connect),
            trust_env=False,
        )
        self._streams = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=ssl_context()),
            headers={**headers, "Accept": "text/event-stream"},
            trust_env=False,
        )
        self._connect = connect

    async def get(self, url: str) -> Reply:
        """GET ``url`` and read the whole answer, within the call's timeout."""
        if self.http2:
            async with asyncio.timeout(self.timeout):
                h2_answer = await self._client.get(url)
            return Reply(h2_answer.status_code, h2_answer.headers, h2_answer.content)
        async with self._polls.get(url, allow_redirects=False, proxy=self._proxy) as answer:
            _check_header_names(answer)
            length = answer.content_length
            if length is not None and length <= MAX_ANSWER_BYTES:
                content = await answer.read()
            else:
                content = await _read_capped(answer)
            return Reply(answer.status, answer.headers, content)

    @contextlib.asynccontextmanager
    async def stream(self, url: str, read_timeout: float, *, limit: bool = False) -> AsyncIterator[httpx.Response]:
        """A GET whose body is read as it comes (the status stream), as an httpx response.

        With ``limit``, raises ``StreamsBusyError`` rather than open one more connection past ``MAX_STREAMS``
        (HTTP/2 streams share connections: no limit there).
        """
        if self.http2:
            h2_timeout = httpx.Timeout(self.timeout, read=read_timeout)
            headers = {"Accept": "text/event-stream"}
            async with self._client.stream("GET", url, headers=headers, timeout=h2_timeout) as response:
                yield response
            return
        if limit and self.streams >= MAX_STREAMS:
            raise StreamsBusyError(f"all {MAX_STREAMS} status-stream connections are in use")
        self.streams += 1
        try:
            timeout = _stream_timeout(self._connect, read_timeout)
            async with self._streams.get(url, allow_redirects=False, proxy=self._proxy, timeout=timeout) as answer:
                _check_header_names(answer)
                yield httpx.Response(answer.status, headers=list(answer.headers.items()), stream=_Body(answer))
        finally:
            self.streams -= 1

    async def aclose(self) -> None:
        await self._polls.close()
        await self._streams.close()


def _stream_timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_read=read)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """A body of unknown or excessive length, read up to ``MAX_ANSWER_BYTES``."""
    if response.content_length is not None:
        raise AnswerTooLargeError(f"the answer declares {response.content_length} bytes; the cap is {MAX_ANSWER_BYTES}")
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise AnswerTooLargeError(f"the answer passed the cap of {MAX_ANSWER_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


@dataclass
class _LoopClients:
    client: httpx.AsyncClient
    in_flight: asyncio.Semaphore
    waits: WaitSession


class _AsyncClientPool:
    """Per event loop and per (base URL, credentials, proxy): one httpx client and one wait session.

    Thousands of triggers in one triggerer share a handful of connections instead of a client each. Calls,
    waits and trigger runs hold the pool while they work (``in_use``); when the last one of a loop leaves,
    the loop's clients are closed: a loop that ends (``asyncio.run`` in user code) leaves no sockets open and
    logs no "Unclosed client session", and the pool does not keep its loop alive (its clients refer to it).
    """

    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _LoopClients]] = (
            weakref.WeakKeyDictionary()
        )
        self._users: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()

    def in_use(self) -> _InUse:
        """Around one user's work on the running loop (a call, a wait, a trigger's run); the last to leave
        closes the loop's clients."""
        return _InUse(self)

    def _join(self, loop: asyncio.AbstractEventLoop) -> None:
        self._users[loop] = self._users.get(loop, 0) + 1

    def _leave(self, loop: asyncio.AbstractEventLoop) -> list[_LoopClients]:
        """One user left: the loop's clients, taken off the pool, when it was the last (the caller closes them)."""
        left = self._users[loop] = self._users[loop] - 1
        if left:
            return []
        del self._users[loop]
        return self._take(loop)  # now: a user arriving while they close gets new clients

    def entry(self, settings: FluxReduxSettings) -> _LoopClients:
        loop = asyncio.get_running_loop()
        per_loop = self._clients.get(loop)
        if per_loop is None:
            per_loop = self._clients[loop] = {}
        entry = per_loop.get(settings.client_key)
        if entry is None or entry.client.is_closed:
            client = async_client(settings)
            entry = _LoopClients(client, asyncio.Semaphore(settings.max_in_flight), WaitSession(settings, client))
            per_loop[settings.client_key] = entry
        return entry

    def get(self, settings: FluxReduxSettings) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        entry = self.entry(settings)
        return entry.client, entry.in_flight

    async def aclose(self) -> None:
        """Close this loop's clients (tests, benchmarks, a clean triggerer shutdown)."""
        await self._close(self._take(asyncio.get_running_loop()))

    def _take(self, loop: asyncio.AbstractEventLoop) -> list[_LoopClients]:
        _SETTINGS_CACHE.pop(loop, None)
        return list(self._clients.pop(loop, {}).values())

    @staticmethod
    async def _close(entries: list[_LoopClients]) -> None:
        for entry in entries:
            await entry.waits.aclose()
            await entry.client.aclose()


class _InUse:
    """``_AsyncClientPool.in_use``: a class, not a generator, since every poll goes through one (1 µs, not 2)."""

    __slots__ = ("_loop", "_pool")

    def __init__(self, pool: _AsyncClientPool) -> None:
        self._pool = pool
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pool._join(self._loop)

    async def __aexit__(self, *_: object) -> None:
        assert self._loop is not None
        closing = self._pool._leave(self._loop)
        if closing:
            # Shielded: a triggerer cancels a finished trigger again until it is gone, and a cut close leaks sockets.
            await asyncio.shield(_AsyncClientPool._close(closing))


ASYNC_CLIENTS = _AsyncClientPool()
