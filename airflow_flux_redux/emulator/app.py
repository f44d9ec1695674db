"""The emulator's ASGI application: routes each request to the module that answers it.

It is not a model. It answers exactly as fal's queue does (codes, bodies, URLs under owner/app only)
and makes real images, but they are deterministic variations of the input image, not FLUX output.
Plain ASGI, no framework: the status route is the hot path of a 10,000-waiter benchmark, so routing is
a few string comparisons on the split path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow_flux_redux.emulator.admin import admin
from airflow_flux_redux.emulator.call import HIDE_DROPS, Call
from airflow_flux_redux.emulator.cancel import cancel
from airflow_flux_redux.emulator.config import EmulatorConfig
from airflow_flux_redux.emulator.files import file
from airflow_flux_redux.emulator.results import result
from airflow_flux_redux.emulator.state import EmulatorState
from airflow_flux_redux.emulator.status import status, stream
from airflow_flux_redux.emulator.submit import submit

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from airflow_flux_redux.emulator.call import Receive, Scope, Send

    RequestRoute = Callable[[EmulatorState, Call, str, str], Awaitable[None]]

# The routes under {owner}/{app}/requests/{id}: (method, path tail after the id, handler).
_REQUEST_ROUTES: tuple[tuple[str, tuple[str, ...], RequestRoute], ...] = (
    ("GET", ("status", "stream"), stream),
    ("GET", ("status",), status),
    ("PUT", ("cancel",), cancel),
    ("GET", (), result),
)


class EmulatorApp:
    """The ASGI callable; its memory is ``.state`` (cleared by ``POST /_emulator/reset``)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.state = EmulatorState(config)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, prefix = scope["path"], self.config.path_prefix
        if prefix:
            if path != prefix and not path.startswith(prefix + "/"):
                await Call(scope, receive, send, path).json(404, {"detail": "Not Found"})
                return
            path = path[len(prefix) :]
        call = Call(scope, receive, send, path)
        head = call.parts[0]
        if head == "_emulator":
            await admin(self.state, call)
        elif head == "files" and len(call.parts) == 3:
            await file(self.state, call)
        elif call.method == "POST" and len(call.parts) >= 2:
            await submit(self.state, call)
        else:
            await self._request_route(call)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.state.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _request_route(self, call: Call) -> None:
        parts, size = call.parts, len(call.parts)
        for method, tail, handler in _REQUEST_ROUTES:
            n = len(tail)
            if size >= 4 + n and parts[size - n - 2] == "requests" and tuple(parts[size - n :]) == tail:
                if call.method != method:
                    await call.json(405, {"detail": "Method Not Allowed"})
                    return
                await handler(self.state, call, "/".join(parts[: size - n - 2]), parts[size - n - 1])
                return
        await call.json(404, {"detail": "Not Found"})

    def stats(self, summary: bool = False) -> dict[str, object]:
        return self.state.stats(summary)


def create_app(config: EmulatorConfig | None = None) -> EmulatorApp:
    """A fresh emulator application (ASGI); serve it with uvicorn or hypercorn, or use EmulatorServer."""
    for name in ("uvicorn.error", "hypercorn.error"):
        logging.getLogger(name).addFilter(HIDE_DROPS)
    return EmulatorApp(config or EmulatorConfig())
