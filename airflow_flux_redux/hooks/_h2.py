"""HTTP/2 for the waits' GETs, written on ``h2`` directly: one reader task per connection.

Its own module because it is one protocol with a small interface: ``H2Connection.connect``, ``open`` a
GET stream, ``cancel`` it; ``H2Stream.response`` and ``body`` for its answer. httpcore's HTTP/2 makes
every waiting stream take a shared read lock and read the socket in turn: with a thousand open status
streams an event waits for the streams queued before it (seconds), and hundreds of concurrent requests
stalled it outright here (benchmarks/README.md has the figures).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import httpx

from airflow_flux_redux.hooks._tls import h2_ssl_context

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class StreamRefused(httpx.RemoteProtocolError):
    """The server's GOAWAY came before it processed this stream: safe to send again on a new connection."""


class H2Stream:
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


class H2Connection:
    """One HTTP/2 connection, written on ``h2`` directly: one reader task hands each frame to its stream.

    httpcore's HTTP/2 makes every waiting stream take a shared read lock and read the socket in turn, so an
    event for one of a thousand open streams waits for the streams queued before it (seconds), and with
    hundreds of concurrent requests it stalled outright here. This reader wakes exactly the stream the
    frame is for. Streams are bounded by the server's SETTINGS_MAX_CONCURRENT_STREAMS; the lane opens
    another connection when one is full.
    """

    def __init__(self, scheme: bytes, host: str, port: int, authority: bytes) -> None:
        import h2.config
        import h2.connection

        self.scheme, self.host, self.port, self.authority = scheme, host, port, authority
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        # Until the server's SETTINGS arrive, stay within the 100 streams RFC 9113 asks every server to allow.
        self.capacity = 100
        self.error: Exception | None = None
        self._flush_pending = False

    def has_room(self) -> bool:
        # Every stream is ours and sent complete, so it is open until its answer ends or it is reset: the
        # streams dict counts them (h2's own count walks all streams, at every new request).
        return not self.closed and len(self.streams) < self.capacity

    async def connect(self, timeout: float) -> None:
        host = self.host
        tls = self.scheme == b"https"
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, self.port, ssl=h2_ssl_context() if tls else None, server_hostname=host if tls else None
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

    def _flush_soon(self) -> None:
        """Requests opened in the same loop turn leave in one write: one syscall for all, not one each."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        data = self._h2.data_to_send()
        if data and self._writer is not None and not self.closed:
            self._writer.write(data)

    def open(self, target: bytes, headers: list[tuple[bytes, bytes]]) -> H2Stream:
        if self.closed:
            raise self.error or httpx.RemoteProtocolError("HTTP/2 connection closed")
        stream_id = self._h2.get_next_available_stream_id()
        self._h2.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":scheme", self.scheme), (b":authority", self.authority),
             (b":path", target), *headers],
            end_stream=True,
        )  # fmt: skip
        stream = self.streams[stream_id] = H2Stream(stream_id)
        self._flush_soon()
        return stream

    def cancel(self, stream: H2Stream) -> None:
        """Reset a stream the caller no longer reads (a wait that ended or was cancelled)."""
        if self.streams.pop(stream.stream_id, None) is not None and not stream.ended and not self.closed:
            with contextlib.suppress(Exception):
                self._h2.reset_stream(stream.stream_id)
                self._flush_soon()

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
                stream.error = StreamRefused("the server closed the HTTP/2 connection before this request")
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
