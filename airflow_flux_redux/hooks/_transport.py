"""The async hook's transport: pooled clients per event loop, and a lane of connections for the waits.

Its own module because it is a concern of its own. Submit, cancel, URLs on other trusted origins and the
sync hook use httpx's clients. The waits' GETs (status polls, results, status streams) on the
connection's own origin take the lane: a few keep-alive HTTP/1.1 connections (``_http1``) or multiplexed
HTTP/2 ones (``_h2``). Through a pooled ``httpx.AsyncClient`` a wait cost 5x what it costs on the lane,
through httpcore and h11 2.6x (benchmarks/README.md). The hook keeps the retry policy and the
reading of answers; everything here returns raw answers or raises httpx's transport errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from airflow_flux_redux.hooks._h2 import H2Connection, H2Stream, StreamRefused
from airflow_flux_redux.hooks._http1 import Http1Connection, request_bytes
from airflow_flux_redux.hooks._settings import _SETTINGS_CACHE
from airflow_flux_redux.hooks._tls import ssl_context as _ssl_context

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Generator

    from airflow_flux_redux.hooks._settings import FluxReduxSettings


def _client_kwargs(settings: FluxReduxSettings) -> dict[str, Any]:
    return {
        "auth": _OriginAuth(settings),
        "headers": {"User-Agent": "airflow-flux-redux", "Accept": "application/json"},
        "timeout": httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
        "follow_redirects": False,
        "verify": _ssl_context(),
        "http2": settings.http2,
        "limits": httpx.Limits(
            max_connections=settings.max_in_flight, max_keepalive_connections=settings.max_in_flight
        ),
    }


class _OriginAuth(httpx.Auth):
    """Adds the key only to requests on a trusted origin: a last guard under ``require_trusted``."""

    def __init__(self, settings: FluxReduxSettings) -> None:
        self._settings = settings

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._settings.trusts(request.url):
            request.headers["Authorization"] = self._settings.authorization
        yield request


class _Reply:
    """A fully read answer from the poll lane: what ``_raise_for_status`` and the models read of a response."""

    __slots__ = ("_raw_headers", "content", "status_code")

    def __init__(self, status_code: int, raw_headers: list[tuple[bytes, bytes]], content: bytes) -> None:
        self.status_code = status_code
        self._raw_headers = raw_headers
        self.content = content

    @property
    def headers(self) -> httpx.Headers:
        return httpx.Headers(self._raw_headers)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Body(httpx.AsyncByteStream):
    """An answer's body, read as it comes, as an httpx stream (for ``httpx-sse``)."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


# The lane's HTTP/1.1 pool: enough for a thousand polls a second on loopback or across a region, and
# each open connection costs the server a socket.
HTTP1_CONNECTIONS = 8
# Each HTTP/1.1 stream holds a connection (~290 KB with TLS): past this many, ``auto`` waits poll instead.
MAX_HTTP1_STREAMS = 256
# What a keep-alive connection the server closed meanwhile looks like: worth one try on a fresh one.
_STALE = (httpx.RemoteProtocolError, httpx.ReadError)


class StreamsBusyError(Exception):
    """Every HTTP/1.1 stream connection the lane allows is in use."""


class _Lane:
    """Connections to the connection's own origin for the waits' GETs: status polls, results, streams.

    A wait only GETs URLs on one origin, so the request line's headers are built once here, HTTP/1.1
    connections are handed out from an idle list with in-flight requests bounded, and HTTP/2 connections
    are filled up to the server's stream limit.
    """

    def __init__(self, settings: FluxReduxSettings) -> None:
        scheme, host, port = settings.origin
        self.scheme, self.host, self.port = scheme.encode(), host, port
        self.http2 = settings.http2
        self._ssl = _ssl_context() if scheme == "https" else None
        authority = f"[{host}]" if ":" in host else host
        if port != (443 if scheme == "https" else 80):
            authority = f"{authority}:{port}"
        self.authority = authority.encode()
        headers = [
            (b"Accept", b"application/json"),
            (b"User-Agent", b"airflow-flux-redux"),
            (b"Authorization", settings.authorization.encode()),
        ]
        self._h1_headers = b"Host: " + self.authority + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
        self._h2_headers = [(name.lower(), value) for name, value in headers]
        self.timeout = settings.timeout
        self.connect_timeout = min(10.0, settings.timeout)
        self._slots = asyncio.Semaphore(
            max(1, settings.max_in_flight if self.http2 else min(HTTP1_CONNECTIONS, settings.max_in_flight))
        )
        self._idle: list[Http1Connection] = []  # HTTP/1.1: one request per connection at a time
        self._streaming: set[Http1Connection] = set()
        self.prefix = settings.origin_prefix
        self._h2: list[H2Connection] = []
        self._h2_opening: asyncio.Future[H2Connection] | None = None

    def target(self, url: str) -> bytes:
        """The request target of ``url`` (on this origin): the server's own URL is sent as it came."""
        rest = url[len(self.prefix) :] if url.startswith(self.prefix) else ""
        if rest[:1] == "/" and rest.isascii() and rest.isprintable() and " " not in rest:
            return rest.encode()
        return httpx.URL(url).raw_path

    async def get(self, url: str) -> _Reply:
        """GET ``url`` (on this origin) and read the whole answer; a stale keep-alive is replaced once."""
        if self.http2:
            return await self._h2_get(url)
        request = request_bytes(self.target(url), self._h1_headers)
        async with self._slots:
            for fresh in (False, True):
                conn, reused = await self._checkout(fresh)
                try:
                    status, headers, content = await conn.get(request, self.timeout)
                except _STALE:
                    conn.close()
                    if reused and not fresh:
                        continue
                    raise
                except BaseException:
                    conn.close()
                    raise
                if conn.reusable:
                    self._idle.append(conn)
                else:
                    conn.close()
                return _Reply(status, headers, content)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def stream(
        self, url: str, read_timeout: float, *, limit_http1: bool = False
    ) -> AsyncIterator[httpx.Response]:
        """A GET whose body is read as it comes (the status stream), on a stream or connection of its own.

        With ``limit_http1``, raises ``StreamsBusyError`` rather than open one more HTTP/1.1 connection
        past ``MAX_HTTP1_STREAMS`` (HTTP/2 streams share connections).
        """
        if self.http2:
            h2_conn, h2_stream = await self.h2_request(url)
            try:
                yield httpx.Response(
                    h2_stream.status, headers=h2_stream.headers, stream=_Body(h2_stream.body(read_timeout))
                )
            finally:
                h2_conn.cancel(h2_stream)
            return
        if limit_http1 and len(self._streaming) >= MAX_HTTP1_STREAMS:
            raise StreamsBusyError(f"all {MAX_HTTP1_STREAMS} HTTP/1.1 stream connections are in use")
        conn = await self._connect()
        self._streaming.add(conn)
        try:
            status, headers, body = await conn.send(request_bytes(self.target(url), self._h1_headers), read_timeout)
            yield httpx.Response(status, headers=headers, stream=_Body(body))
        finally:
            self._streaming.discard(conn)
            conn.close()

    async def _connect(self) -> Http1Connection:
        return await Http1Connection.open(self.host, self.port, ssl_context=self._ssl, timeout=self.connect_timeout)

    async def _checkout(self, fresh: bool) -> tuple[Http1Connection, bool]:
        while self._idle and not fresh:
            conn = self._idle.pop()
            if conn.idle_ok:
                return conn, True
            conn.close()
        return await self._connect(), False

    async def h2_connection(self) -> H2Connection:
        """An HTTP/2 connection with room for one more stream; opens one (only one at a time) when all are full."""
        while True:
            if self._h2 and self._h2[-1].has_room():  # the newest first: the others are usually full
                return self._h2[-1]
            for conn in self._h2:
                if conn.has_room():
                    return conn
            self._h2 = [conn for conn in self._h2 if not conn.closed]
            if (pending := self._h2_opening) is not None:
                try:
                    await asyncio.shield(pending)
                except asyncio.CancelledError:
                    # The opener was cancelled, not this waiter: try to open one ourselves.
                    task = asyncio.current_task()
                    if not pending.cancelled() or (task is not None and task.cancelling()):
                        raise
                continue
            opening = self._h2_opening = asyncio.get_running_loop().create_future()
            conn = H2Connection(self.scheme, self.host, self.port, self.authority)
            try:
                await conn.connect(self.connect_timeout)
            except asyncio.CancelledError:
                opening.cancel()
                raise
            except Exception as err:
                opening.set_exception(err)
                opening.exception()
                raise
            finally:
                self._h2_opening = None
            self._h2.append(conn)
            opening.set_result(conn)
            return conn

    async def h2_request(self, url: str) -> tuple[H2Connection, H2Stream]:
        """Send a GET on a connection with room and wait for its response headers; a refused one goes again."""
        import h2.exceptions

        target = self.target(url)
        for attempt in range(3):
            conn = await self.h2_connection()
            try:
                stream = conn.open(target, self._h2_headers)
            except h2.exceptions.H2Error as err:  # the connection went away between the check and the send
                conn.closed = True
                if attempt == 2:
                    raise httpx.RemoteProtocolError(f"HTTP/2: {err}") from None
                continue
            try:
                await stream.response(self.timeout)
            except StreamRefused:
                if attempt == 2:
                    raise
                continue
            except BaseException:
                conn.cancel(stream)
                raise
            return conn, stream
        raise AssertionError("unreachable")  # pragma: no cover

    async def _h2_get(self, url: str) -> _Reply:
        timeout = self.timeout
        async with self._slots:
            conn, stream = await self.h2_request(url)
            try:
                content = b"".join([chunk async for chunk in stream.body(timeout)])
            finally:
                conn.cancel(stream)
        return _Reply(stream.status, stream.headers, content)

    async def aclose(self) -> None:
        for conn in (*self._idle, *self._streaming):
            conn.close()
        self._idle.clear()
        for h2_conn in self._h2:
            await h2_conn.aclose()
        self._h2.clear()


@dataclass
class _LoopClients:
    client: httpx.AsyncClient
    in_flight: asyncio.Semaphore
    lane: _Lane


class _AsyncClientPool:
    """Per event loop and per (base URL, credentials): one pooled ``AsyncClient`` and one lane for waits.

    Thousands of triggers in one triggerer share a handful of connections instead of a client each.
    """

    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _LoopClients]] = (
            weakref.WeakKeyDictionary()
        )

    def entry(self, settings: FluxReduxSettings) -> _LoopClients:
        loop = asyncio.get_running_loop()
        per_loop = self._clients.get(loop)
        if per_loop is None:
            per_loop = self._clients[loop] = {}
        entry = per_loop.get(settings.client_key)
        if entry is None or entry.client.is_closed:
            client = httpx.AsyncClient(**_client_kwargs(settings))
            entry = _LoopClients(client, asyncio.Semaphore(settings.max_in_flight), _Lane(settings))
            per_loop[settings.client_key] = entry
        return entry

    def get(self, settings: FluxReduxSettings) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        entry = self.entry(settings)
        return entry.client, entry.in_flight

    async def aclose(self) -> None:
        """Close this loop's clients (tests, benchmarks, a clean triggerer shutdown)."""
        loop = asyncio.get_running_loop()
        _SETTINGS_CACHE.pop(loop, None)
        for entry in self._clients.pop(loop, {}).values():
            await entry.lane.aclose()
            await entry.client.aclose()


ASYNC_CLIENTS = _AsyncClientPool()
