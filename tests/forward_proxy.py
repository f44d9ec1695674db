"""A small forward proxy for the tests, on loopback: the proxy of a corporate network.

It knows host names nobody else resolves (``fal-gw.internal`` -> the emulator), so a request that bypasses
it fails to resolve, as it does behind a real proxy. It forwards absolute-form requests (``GET
http://host/...``), tunnels ``CONNECT host:port``, may require proxy credentials, and logs every request
it sees. HTTP framing on both sides is h11's.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authorization", b"proxy-connection", b"te", b"upgrade"}


@dataclass
class Seen:
    method: str
    target: str
    authorization: bool  # the request carried an Authorization header the proxy could read


@dataclass
class ForwardProxy:
    """``with ForwardProxy({"fal-gw.internal": ("127.0.0.1", port)}) as proxy:``, then ``proxy.url``."""

    hosts: dict[str, tuple[str, int]]
    credentials: tuple[str, str] | None = None
    log: list[Seen] = field(default_factory=list)
    refused: int = 0
    url: str = ""

    def __enter__(self) -> ForwardProxy:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        user = f"{self.credentials[0]}:{self.credentials[1]}@" if self.credentials else ""
        self.url = f"http://{user}127.0.0.1:{self.port}"
        return self

    def __exit__(self, *_: object) -> None:
        async def shutdown() -> None:
            self._server.close()
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def targets(self) -> list[str]:
        return [f"{seen.method} {seen.target}" for seen in self.log]

    def _upstream(self, host: str) -> tuple[str, int] | None:
        name = host.rpartition(":")[0] if ":" in host else host
        mapped = self.hosts.get(name) or self.hosts.get(host)
        if mapped is None:
            return None
        return mapped

    def _authorized(self, request: h11.Request) -> bool:
        if self.credentials is None:
            return True
        expected = b"Basic " + base64.b64encode(":".join(self.credentials).encode())
        return any(k.lower() == b"proxy-authorization" and v == expected for k, v in request.headers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next(conn, reader)
                if not isinstance(request, h11.Request):
                    return
                body = b""
                while not isinstance(event := await _next(conn, reader), h11.EndOfMessage):
                    if isinstance(event, h11.Data):
                        body += event.data
                method, target = request.method.decode(), request.target.decode()
                auth = any(k.lower() == b"authorization" for k, _ in request.headers)
                self.log.append(Seen(method, target, auth))
                if not self._authorized(request):
                    self.refused += 1
                    await _answer(conn, writer, 407, [(b"proxy-authenticate", b'Basic realm="tests"')])
                elif method == "CONNECT":
                    await self._tunnel(conn, reader, writer, target)
                    return
                else:
                    await self._forward(conn, writer, request, body)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _tunnel(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str
    ) -> None:
        upstream = self._upstream(target)
        if upstream is None:
            await _answer(conn, writer, 502, [])
            return
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        writer.write(conn.send(h11.Response(status_code=200, headers=[])))
        await writer.drain()
        early, _ = conn.trailing_data
        if early:
            up_writer.write(early)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)

    async def _forward(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes
    ) -> None:
        parts = urlsplit(request.target.decode())
        upstream = self._upstream(parts.netloc)
        if parts.scheme != "http" or upstream is None:
            await _answer(conn, writer, 502, [])
            return
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        client = h11.Connection(h11.CLIENT)
        headers = [(k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP]
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        up_writer.write(client.send(h11.Request(method=request.method, target=target, headers=headers)))
        if body:
            up_writer.write(client.send(h11.Data(data=body)))
        up_writer.write(client.send(h11.EndOfMessage()))
        try:
            while True:
                event = await _next(client, up_reader)
                if isinstance(event, h11.Response):
                    kept = [(k, v) for k, v in event.headers if k.lower() not in HOP_BY_HOP]
                    writer.write(conn.send(h11.Response(status_code=event.status_code, headers=kept)))
                elif isinstance(event, h11.Data):
                    writer.write(conn.send(h11.Data(data=event.data)))
                elif isinstance(event, h11.EndOfMessage):
                    writer.write(conn.send(h11.EndOfMessage()))
                    break
                else:
                    break
                await writer.drain()
        finally:
            up_writer.close()


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(65536))


async def _answer(conn: h11.Connection, writer: asyncio.StreamWriter, code: int, headers: list) -> None:
    writer.write(conn.send(h11.Response(status_code=code, headers=[*headers, (b"content-length", b"0")])))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
