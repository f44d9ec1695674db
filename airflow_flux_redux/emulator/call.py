"""One HTTP request as the emulator sees it (plain ASGI, no framework), and the ways to answer it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from airflow_flux_redux.emulator.jobs import dumps

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 64 * 1024 * 1024


class ConnectionDropped(Exception):
    """Raised on purpose mid-response so the server closes the connection (a ``reset`` fault)."""


class _HideDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


HIDE_DROPS = _HideDrops()


class Call:
    """One HTTP request: its path (below the emulator's prefix) split in parts, headers and query."""

    __slots__ = ("headers", "method", "parts", "query", "receive", "scope", "send")

    def __init__(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        self.scope, self.receive, self.send = scope, receive, send
        self.method: str = scope["method"]
        self.parts: list[str] = path.strip("/").split("/")
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.query = dict(parse_qsl(scope["query_string"].decode("latin-1")))

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("1", "true", "yes")

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1").strip()

    async def reply(
        self,
        code: int,
        body: bytes = b"",
        headers: Iterable[tuple[bytes, bytes]] = (),
        content_type: bytes = b"application/json",
    ) -> None:
        start = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *headers]
        await self.send({"type": "http.response.start", "status": code, "headers": start})
        await self.send({"type": "http.response.body", "body": body})

    async def json(self, code: int, value: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        await self.reply(code, dumps(value), headers)

    async def stream(self, code: int, headers: list[tuple[bytes, bytes]], chunks: Iterable[bytes]) -> None:
        """An answer sent in parts, with the given headers only (no Content-Length unless they have one)."""
        await self.send({"type": "http.response.start", "status": code, "headers": headers})
        for chunk in chunks:
            await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        await self.send({"type": "http.response.body", "body": b""})

    async def body(self) -> bytes | None:
        """The request body, or None when it exceeds the size cap."""
        chunks, size = [], 0
        while True:
            message = await self.receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def drop(self) -> None:
        """Start an answer, then abort it: the client sees a broken connection, not an HTTP error."""
        headers = [(b"content-type", b"application/json"), (b"content-length", b"1000")]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        await self.send({"type": "http.response.body", "body": b'{"status":', "more_body": True})
        raise ConnectionDropped

    async def wait_for_disconnect(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
