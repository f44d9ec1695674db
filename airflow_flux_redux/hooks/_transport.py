"""The async hook's transport: pooled clients per event loop, and a lane of connections for the waits.

Its own module because it is a concern of its own, and a large one. A profile of 1,000 waiting triggers
in one triggerer showed httpx's connection pool re-scanning every connection on each request event, a
cost that grows with the square of open connections (86 % of the CPU), and its client layer costing more
than the poll itself. So the waits' GETs go to httpcore directly on a plain asyncio network backend, and
HTTP/2 is written on ``h2`` directly so that one reader task wakes exactly the multiplexed stream a frame
is for. The hook keeps the retry policy and the reading of answers; everything here returns raw answers
or raises httpx's transport errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from airflow_flux_redux.hooks._settings import _SETTINGS_CACHE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Generator

    from airflow_flux_redux.hooks._settings import FluxReduxSettings

_SSL_CONTEXT: ssl.SSLContext | None = None


def _new_ssl_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    with contextlib.suppress(ImportError):
        import certifi

        context.load_verify_locations(certifi.where())
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def _ssl_context() -> ssl.SSLContext:
    """One SSL context per process: building one loads the CA bundle (~25 ms, ~850 KB)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = _new_ssl_context()
    return _SSL_CONTEXT


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


def _httpx_error(err: Exception) -> httpx.TransportError:
    """httpcore's exception as the httpx one of the same name, so one error policy reads both."""
    error_class = getattr(httpx, type(err).__name__, None)
    if not (isinstance(error_class, type) and issubclass(error_class, httpx.TransportError)):
        error_class = httpx.TransportError
    return error_class(str(err) or type(err).__name__)


_HTTPCORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)
# What a keep-alive connection the server closed meanwhile looks like: worth one try on a fresh one.
_STALE = (httpcore.ConnectionNotAvailable, httpcore.ReadError, httpcore.WriteError, httpcore.RemoteProtocolError)


class _CoreStream(httpx.AsyncByteStream):
    """An httpcore response body as an httpx stream, its errors as httpx's."""

    def __init__(self, response: httpcore.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_stream():
                yield chunk
        except _HTTPCORE_ERRORS as err:
            raise _httpx_error(err) from None

    async def aclose(self) -> None:
        await self._response.aclose()


class _StreamRefused(httpx.RemoteProtocolError):
    """The server's GOAWAY came before it processed this stream: safe to send again on a new connection."""


class _H2Stream:
    """One request on a multiplexed HTTP/2 connection: its answer, filled in by the connection's reader."""

    __slots__ = ("_waiter", "chunks", "ended", "error", "headers", "status", "stream_id")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.ended = False
        self.error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self, timeout: float) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            raise httpx.ReadTimeout("no answer on the HTTP/2 stream in time") from None
        finally:
            self._waiter = None

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    async def response(self, timeout: float) -> None:
        while not self.status:
            self._check()
            await self._wait(timeout)

    async def body(self, timeout: float) -> AsyncIterator[bytes]:
        while True:
            if self.chunks:
                chunks, self.chunks = self.chunks, []
                for chunk in chunks:
                    yield chunk
            if self.ended:
                return
            self._check()
            await self._wait(timeout)


class _H2Connection:
    """One HTTP/2 connection, written on ``h2`` directly: one reader task hands each frame to its stream.

    httpcore's HTTP/2 makes every waiting stream take a shared read lock and read the socket in turn, so an
    event for one of a thousand open streams waits for the streams queued before it (seconds), and with
    hundreds of concurrent requests it stalled outright here. This reader wakes exactly the stream the
    frame is for. Streams are bounded by the server's SETTINGS_MAX_CONCURRENT_STREAMS; the lane opens
    another connection when one is full.
    """

    def __init__(self, lane: _Lane) -> None:
        import h2.config
        import h2.connection

        self._lane = lane
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.streams: dict[int, _H2Stream] = {}
        self.closed = False
        # Until the server's SETTINGS arrive, stay within the 100 streams RFC 9113 asks every server to allow.
        self.capacity = 100
        self.error: Exception | None = None

    def has_room(self) -> bool:
        # Every stream is ours and sent complete, so it is open until its answer ends or it is reset: the
        # streams dict counts them (h2's own count walks all streams, at every new request).
        return not self.closed and len(self.streams) < self.capacity

    async def connect(self) -> None:
        origin = self._lane.origin
        host = origin.host.decode()
        tls = origin.scheme == b"https"
        try:
            async with asyncio.timeout(self._lane.extensions["timeout"]["connect"]):
                reader, writer = await asyncio.open_connection(
                    host, origin.port, ssl=_h2_ssl_context() if tls else None, server_hostname=host if tls else None
                )
        except (OSError, TimeoutError) as err:
            raise (httpx.ConnectTimeout if isinstance(err, TimeoutError) else httpx.ConnectError)(str(err)) from None
        if tls and (ssl_object := writer.get_extra_info("ssl_object")) and ssl_object.selected_alpn_protocol() != "h2":
            writer.close()
            raise httpx.UnsupportedProtocol("the server did not agree to HTTP/2")
        self._writer = writer
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(2**24)
        self._flush()
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._writer is not None and not self.closed:
            self._writer.write(data)

    def open(self, target: bytes, headers: list[tuple[bytes, bytes]]) -> _H2Stream:
        if self.closed:
            raise self.error or httpx.RemoteProtocolError("HTTP/2 connection closed")
        origin = self._lane.origin
        stream_id = self._h2.get_next_available_stream_id()
        self._h2.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", origin.scheme), (b":authority", self._lane.authority),
             (b":path", target), *headers],
            end_stream=True,
        )  # fmt: skip
        stream = self.streams[stream_id] = _H2Stream(stream_id)
        self._flush()
        return stream

    def cancel(self, stream: _H2Stream) -> None:
        """Reset a stream the caller no longer reads (a wait that ended or was cancelled)."""
        if self.streams.pop(stream.stream_id, None) is not None and not stream.ended and not self.closed:
            with contextlib.suppress(Exception):
                self._h2.reset_stream(stream.stream_id)
                self._flush()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        import h2.events

        error: Exception = httpx.RemoteProtocolError("the server closed the HTTP/2 connection")
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for event in self._h2.receive_data(data):
                    stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
                    if isinstance(event, h2.events.ResponseReceived) and stream is not None:
                        stream.headers = [(k, v) for k, v in event.headers if not k.startswith(b":")]
                        stream.status = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        if stream is not None:
                            stream.chunks.append(event.data)
                    elif isinstance(event, h2.events.StreamEnded) and stream is not None:
                        stream.ended = True
                        del self.streams[event.stream_id]
                    elif isinstance(event, h2.events.StreamReset) and stream is not None:
                        stream.error = httpx.RemoteProtocolError(f"the server reset the stream ({event.error_code})")
                        del self.streams[event.stream_id]
                    elif isinstance(event, h2.events.RemoteSettingsChanged):
                        self.capacity = min(self._h2.remote_settings.max_concurrent_streams, 1000)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self._goaway(event.last_stream_id)
                        continue
                    else:
                        continue
                    if stream is not None:
                        stream.wake()
                self._flush()
                if self.closed and not self.streams:
                    break
        except Exception as err:  # a broken connection fails its streams; they raise it to their callers
            error = httpx.ReadError(f"HTTP/2 connection failed: {err}")
        self._fail(error)

    def _goaway(self, last_stream_id: int | None) -> None:
        """No new streams here; the ones the server never saw go again elsewhere, the rest finish."""
        self.closed = True
        for stream_id, stream in list(self.streams.items()):
            if last_stream_id is None or stream_id > last_stream_id:
                stream.error = _StreamRefused("the server closed the HTTP/2 connection before this request")
                del self.streams[stream_id]
                stream.wake()

    def _fail(self, error: Exception) -> None:
        self.closed = True
        self.error = error
        for stream in self.streams.values():
            stream.error = error
            stream.wake()
        self.streams.clear()
        if self._writer is not None:
            self._writer.close()

    async def aclose(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
        if not self.closed:
            with contextlib.suppress(Exception):
                self._h2.close_connection()
                self._flush()
        self._fail(httpx.RemoteProtocolError("HTTP/2 connection closed"))


_H2_SSL_CONTEXT: ssl.SSLContext | None = None


def _h2_ssl_context() -> ssl.SSLContext:
    """Like ``_ssl_context()``, offering only h2 by ALPN (one per process as well)."""
    global _H2_SSL_CONTEXT
    if _H2_SSL_CONTEXT is None:
        _H2_SSL_CONTEXT = _new_ssl_context(["h2"])
    return _H2_SSL_CONTEXT


class _H2Body(httpx.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk


class _StreamProtocol(asyncio.Protocol):
    """Bytes from one socket, for ``_AsyncioStream.read``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def _expire(waiter: asyncio.Future[None], error: Exception) -> None:
    if not waiter.done():
        waiter.set_exception(error)


class _AsyncioStream(httpcore.AsyncNetworkStream):
    """httpcore's network stream on a plain asyncio transport.

    httpcore's default backend goes through anyio, whose cancel scope per read and write (``fail_after``)
    and socket-stream layers cost about a fifth of a poll; a timer handle per blocking read does the same.
    """

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        while not protocol.buffer:
            if protocol.eof:
                if protocol.error is not None:
                    raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
                return b""
            loop = asyncio.get_running_loop()
            waiter = protocol.waiter = loop.create_future()
            timer = (
                loop.call_later(timeout, _expire, waiter, httpcore.ReadTimeout("read timed out")) if timeout else None
            )
            try:
                await waiter
            finally:
                protocol.waiter = None
                if timer is not None:
                    timer.cancel()
        data = bytes(protocol.buffer[:max_bytes])
        del protocol.buffer[:max_bytes]
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)  # requests are small GETs: no need to wait for the buffer to drain

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as err:
            self._transport.close()
            raise httpcore.ConnectError(str(err)) from None
        if transport is None:
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        return _AsyncioStream(transport, self._protocol)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle keep-alive connection the server closed, or that has stray data
            return bool(self._protocol.buffer) or self._protocol.eof
        name = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername", "socket": "socket"}
        return self._transport.get_extra_info(name[info]) if info in name else None


class _AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _StreamProtocol, host, port, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as err:
            raise httpcore.ConnectError(str(err)) from None
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_ASYNCIO_BACKEND = _AsyncioBackend()


# The lane's HTTP/1.1 pool: enough for a thousand polls a second on loopback or across a region.
HTTP1_CONNECTIONS = 8


class _Lane:
    """Connections to the connection's own origin for the waits' GETs: status polls, results, streams.

    httpx's pool re-scans every connection on each request event (a cost that grows with the square of
    open connections: 86 % of the CPU at 1,000 waiters) and its client layer (URL merging, cookies, auth
    flow, redirects) costs more than the poll itself. A wait only GETs URLs on one origin, so it goes to
    httpcore directly: a few HTTP/1.1 keep-alive connections handed out from an idle list (or HTTP/2
    connections, multiplexed), in-flight requests bounded, request line and headers built once.
    """

    def __init__(self, settings: FluxReduxSettings) -> None:
        scheme, host, port = settings.origin
        self.origin = httpcore.Origin(scheme.encode(), host.encode(), port)
        self.http2 = settings.http2
        self._ssl = _ssl_context() if scheme == "https" else None
        authority = f"[{host}]" if ":" in host else host
        if port != (443 if scheme == "https" else 80):
            authority = f"{authority}:{port}"
        self.authority = authority.encode()
        self.headers = [
            (b"Host", self.authority),
            (b"Accept", b"application/json"),
            (b"User-Agent", b"airflow-flux-redux"),
            (b"Authorization", settings.authorization.encode()),
        ]
        self.timeout = settings.timeout
        self.extensions = {"timeout": self._timeouts(settings.timeout)}
        # HTTP/1.1: a few connections carry a thousand polls a second on loopback or across a region, and
        # each open connection costs the server a socket; HTTP/2 multiplexes the in-flight requests.
        self._slots = asyncio.Semaphore(
            max(1, settings.max_in_flight if self.http2 else min(HTTP1_CONNECTIONS, settings.max_in_flight))
        )
        self._idle: list[httpcore.AsyncHTTPConnection] = []  # HTTP/1.1: one request per connection at a time
        self.http1_streams = 0
        self.prefix = settings.origin_prefix
        self._open: weakref.WeakSet[httpcore.AsyncHTTPConnection] = weakref.WeakSet()
        self._h2_headers = [(name.lower(), value) for name, value in self.headers if name != b"Host"]
        self._h2: list[_H2Connection] = []
        self._h2_opening: asyncio.Future[_H2Connection] | None = None

    async def h2_connection(self) -> _H2Connection:
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
            conn = _H2Connection(self)
            try:
                await conn.connect()
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

    async def h2_request(self, url: str) -> tuple[_H2Connection, _H2Stream]:
        """Send a GET on a connection with room and wait for its response headers; a refused one goes again."""
        import h2.exceptions

        target = self.request(url).url.target
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
            except _StreamRefused:
                if attempt == 2:
                    raise
                continue
            except BaseException:
                conn.cancel(stream)
                raise
            return conn, stream
        raise AssertionError("unreachable")  # pragma: no cover

    def _timeouts(self, read: float) -> dict[str, float]:
        return {"connect": min(10.0, self.timeout), "read": read, "write": self.timeout, "pool": self.timeout}

    def connection(self, *, http2: bool | None = None) -> httpcore.AsyncHTTPConnection:
        use_h2 = self.http2 if http2 is None else http2
        h2c = use_h2 and self.origin.scheme == b"http"  # cleartext HTTP/2 only by prior knowledge
        conn = httpcore.AsyncHTTPConnection(
            self.origin, ssl_context=self._ssl, http1=not h2c, http2=use_h2, network_backend=_ASYNCIO_BACKEND
        )
        self._open.add(conn)
        return conn

    def request(self, url: str, *, read_timeout: float | None = None) -> httpcore.Request:
        rest = url[len(self.prefix) :] if url.startswith(self.prefix) else ""
        if rest[:1] == "/" and rest.isascii() and rest.isprintable() and " " not in rest:
            path = rest.encode()  # the server's own URL, already encoded: sent as it came
        else:
            path = httpx.URL(url).raw_path
        target = httpcore.URL(scheme=self.origin.scheme, host=self.origin.host, port=self.origin.port, target=path)
        extensions = self.extensions if read_timeout is None else {"timeout": self._timeouts(read_timeout)}
        return httpcore.Request(b"GET", target, headers=self.headers, extensions=extensions)

    async def get(self, url: str) -> _Reply:
        """GET ``url`` (on this origin) and read the whole answer; a stale keep-alive is replaced once."""
        if self.http2:
            return await self._h2_get(url)
        request = self.request(url)
        async with self._slots:
            for fresh in (False, True):
                conn, reused = self._checkout(fresh)
                try:
                    response = await conn.handle_async_request(request)
                    content = await response.aread()
                    await response.aclose()  # hands the connection back to IDLE for the next request
                except _STALE as err:
                    self._discard(conn)
                    if reused and not fresh:
                        continue
                    raise _httpx_error(err) from None
                except _HTTPCORE_ERRORS as err:
                    self._discard(conn)
                    raise _httpx_error(err) from None
                except BaseException:
                    self._discard(conn)
                    raise
                self._checkin(conn)
                return _Reply(response.status, response.headers, content)
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

    def _checkout(self, fresh: bool) -> tuple[httpcore.AsyncHTTPConnection, bool]:
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not (conn.has_expired() or conn.is_closed()):
                return conn, True
            self._discard(conn)
        return self.connection(), False

    def _checkin(self, conn: httpcore.AsyncHTTPConnection) -> None:
        if not conn.is_closed():
            self._idle.append(conn)

    def _discard(self, conn: httpcore.AsyncHTTPConnection) -> None:
        with contextlib.suppress(RuntimeError):
            closing = asyncio.get_running_loop().create_task(conn.aclose())
            _CLOSING.add(closing)
            closing.add_done_callback(_CLOSING.discard)

    async def aclose(self) -> None:
        for conn in list(self._open):
            with contextlib.suppress(Exception):
                await conn.aclose()
        self._idle.clear()
        for h2_conn in self._h2:
            await h2_conn.aclose()
        self._h2.clear()


_CLOSING: set[asyncio.Task[None]] = set()
# Each HTTP/1.1 stream holds a connection (~290 KB with TLS): past this many, ``auto`` waits poll instead.
MAX_HTTP1_STREAMS = 256


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
