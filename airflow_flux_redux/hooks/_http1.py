"""A keep-alive HTTP/1.1 connection for the waits' GETs, on a plain asyncio protocol.

Its own module because it is one protocol with one small interface (``get``, ``stream``). A status poll
through httpcore and h11 cost 2.4x what aiohttp pays for the same poll (benchmarks/README.md): h11's
event machinery and httpcore's connection states run for every request. A wait only sends bodiless GETs
to one origin and reads small answers, so this writes the request line and headers once per request from
bytes built once per lane, and reads the answer with ``bytes.find``: status line, headers, then a body
framed by Content-Length, chunked encoding or the end of the connection. Errors are httpx's transport
errors, so the hook's one error policy reads them.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

MAX_HEAD_BYTES = 64 * 1024


class Http1Connection(asyncio.Protocol):
    """One connection; one request at a time. ``reusable`` says whether another request may follow."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._keep_alive = False
        self.reusable = False

    # -- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._eof = True
        self._error = exc
        self.reusable = False
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the interface ------------------------------------------------------------------------------------

    @classmethod
    async def open(cls, host: str, port: int, *, ssl_context: ssl.SSLContext | None, timeout: float) -> Http1Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    cls, host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as err:
            raise httpx.ConnectError(str(err) or type(err).__name__) from None
        conn.reusable = True
        return conn

    @property
    def idle_ok(self) -> bool:
        """Still fit for a request: the server neither closed it nor sent anything unasked meanwhile."""
        return self.reusable and not self._eof and not self._buffer

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    async def get(self, request: bytes, timeout: float) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send ``request`` (a whole GET) and read the whole answer."""
        status, headers, body = await self.send(request, timeout)
        content = b"".join([chunk async for chunk in body])
        return status, headers, content

    async def send(self, request: bytes, timeout: float) -> tuple[int, list[tuple[bytes, bytes]], AsyncIterator[bytes]]:
        """Send ``request`` and read the answer's head; the body follows as the iterator is read."""
        if self._transport is None or self._transport.is_closing() or not self.reusable:
            raise httpx.RemoteProtocolError("the connection is closed")
        self.reusable = False  # until this answer is read to its end
        self._transport.write(request)
        status, headers = await self._head(timeout)
        return status, headers, self._body(status, headers, timeout)

    # -- reading ------------------------------------------------------------------------------------------

    async def _more(self, timeout: float) -> None:
        if self._eof:
            if self._error is not None:
                raise httpx.ReadError(str(self._error) or type(self._error).__name__)
            raise httpx.RemoteProtocolError("the server closed the connection before the answer ended")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()

    async def _find(self, marker: bytes, what: str, timeout: float) -> int:
        """Where ``marker`` starts in the buffer, reading until it comes (within ``MAX_HEAD_BYTES``)."""
        while (end := self._buffer.find(marker)) < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError(f"{what} is too large")
            await self._more(timeout)
        return end

    async def _head(self, timeout: float) -> tuple[int, list[tuple[bytes, bytes]]]:
        while True:
            end = await self._find(b"\r\n\r\n", "the answer's headers", timeout)
            lines = bytes(self._buffer[:end]).split(b"\r\n")
            del self._buffer[: end + 4]
            version, _, rest = lines[0].partition(b" ")
            code = rest[:3]
            if not (version.startswith(b"HTTP/1.") and code.isdigit()):
                raise httpx.RemoteProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
            status = int(code)
            if 100 <= status < 200:  # an interim answer (103 Early Hints): the real one follows
                continue
            headers = []
            for line in lines[1:]:
                name, colon, value = line.partition(b":")
                if not colon:
                    raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}")
                headers.append((name.strip(), value.strip()))
            self._keep_alive = version == b"HTTP/1.1"
            return status, headers

    def _body(self, status: int, headers: list[tuple[bytes, bytes]], timeout: float) -> AsyncIterator[bytes]:
        length: int | None = None
        chunked = False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit():
                    raise httpx.RemoteProtocolError(f"bad Content-Length {value[:40]!r}")
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = value.lower().endswith(b"chunked")
            elif lower == b"connection" and b"close" in value.lower():
                self._keep_alive = False
        if status in (204, 304):
            length = 0
        if chunked:
            return self._chunked(timeout)
        if length is not None:
            return self._sized(length, timeout)
        self._keep_alive = False
        return self._until_closed(timeout)

    def _done(self) -> None:
        # Another request may follow only on a kept-alive connection with nothing left unread.
        self.reusable = self._keep_alive and not self._eof and not self._buffer

    async def _exactly(self, length: int, timeout: float) -> AsyncIterator[bytes]:
        while length:
            if not self._buffer:
                await self._more(timeout)
            take = bytes(self._buffer[:length])
            del self._buffer[:length]
            length -= len(take)
            yield take

    async def _sized(self, length: int, timeout: float) -> AsyncIterator[bytes]:
        async for piece in self._exactly(length, timeout):
            yield piece
        self._done()

    async def _chunked(self, timeout: float) -> AsyncIterator[bytes]:
        while True:
            end = await self._find(b"\r\n", "a chunk size line", timeout)
            size_text = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise httpx.RemoteProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            del self._buffer[: end + 2]
            if size == 0:
                break
            async for piece in self._exactly(size, timeout):
                yield piece
            while len(self._buffer) < 2:
                await self._more(timeout)
            if self._buffer[:2] != b"\r\n":
                raise httpx.RemoteProtocolError("a chunk did not end with CRLF")
            del self._buffer[:2]
        # Trailers (rarely sent) end with an empty line.
        while (end := await self._find(b"\r\n", "a trailer", timeout)) != 0:
            del self._buffer[: end + 2]
        del self._buffer[:2]
        self._done()

    async def _until_closed(self, timeout: float) -> AsyncIterator[bytes]:
        while True:
            if self._buffer:
                data = bytes(self._buffer)
                self._buffer.clear()
                yield data
            if self._eof:
                if self._error is not None:
                    raise httpx.ReadError(str(self._error) or type(self._error).__name__)
                return
            await self._more(timeout)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("no answer from the server in time"))


def request_bytes(target: bytes, header_block: bytes) -> bytes:
    """A bodiless GET: ``header_block`` is the lane's headers, ``Name: value\\r\\n`` each, built once."""
    return b"GET " + target + b" HTTP/1.1\r\n" + header_block + b"\r\n"
