"""Listening sockets and the ASGI servers (uvicorn, or hypercorn for HTTP/2) the emulator runs on."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from airflow_flux_redux.emulator.app import EmulatorApp

ServerKind = Literal["uvicorn", "hypercorn"]
BANNER = "flux-redux-emulator listening on "
KEY_ENV = "FLUX_REDUX_EMULATOR_KEY"
_BACKLOG = 16384  # the 10,000-waiter benchmark connects all at once


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; with port 0 the OS picks a free port, and nobody can take it before we serve."""
    # proto=IPPROTO_TCP matters: asyncio turns Nagle off only on sockets that say so, and with Nagle on
    # every keep-alive answer (headers, then body) waits ~40 ms for the client's delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)  # connections queue from now on, even before the server loop runs
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(app: EmulatorApp, sock: socket.socket, server: ServerKind, stop: asyncio.Event) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set; hypercorn adds HTTP/2 cleartext (prior knowledge)."""
    if server == "hypercorn":
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        hyper = Config()
        hyper.bind = [f"fd://{sock.detach()}"]
        hyper.backlog = _BACKLOG
        hyper.loglevel = "WARNING"
        hyper.accesslog = None
        hyper.graceful_timeout = 1.0
        # Hypercorn sends GOAWAY after 1,000 requests by default and then crashes (h2 state CLOSED) on
        # the streams a busy client sent meanwhile; a long-lived multiplexed client needs no such limit.
        hyper.keep_alive_max_requests = 2**31
        await hypercorn_serve(app, hyper, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        return
    import uvicorn

    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"
    server_ = uvicorn.Server(
        uvicorn.Config(
            app, loop="asyncio", http=http, log_level="warning", backlog=_BACKLOG, timeout_graceful_shutdown=1
        )
    )
    task = asyncio.ensure_future(server_.serve(sockets=[sock]))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    server_.should_exit = True
    stopped.cancel()
    await task
