"""Run the emulator on loopback, in a background thread or a subprocess, and drive its admin API.

Both modes are controlled over HTTP only, so a test talks the same way to an emulator in its own
process and to one started for ``airflow standalone`` (whose triggerer runs in another process).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import httpx

from airflow_flux_redux.emulator.app import create_app
from airflow_flux_redux.emulator.cli import config_to_argv
from airflow_flux_redux.emulator.config import EmulatorConfig
from airflow_flux_redux.emulator.serving import BANNER, KEY_ENV, ServerKind, bind, serve, url_of

if TYPE_CHECKING:
    from types import TracebackType

    from airflow_flux_redux.emulator.app import EmulatorApp


class EmulatorServer:
    """A running emulator at ``.url``; a context manager. It is not a model (see the package docstring).

    ``.url`` is the base URL a connection points at, ``path_prefix`` included; the admin API is under it too.

    ``in_process=True`` serves from a daemon thread of this process; ``in_process=False`` starts
    ``python -m airflow_flux_redux.emulator --port 0`` and reads the URL from its first stdout line.
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        server: ServerKind = "uvicorn",
        in_process: bool = True,
        startup_timeout: float = 20.0,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.host, self.port, self.server = host, port, server
        self.in_process = in_process
        self.startup_timeout = startup_timeout
        self.url = ""
        self.app: EmulatorApp | None = None  # only in-process: the live application, for debugging
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._process: subprocess.Popen[str] | None = None
        self._admin: httpx.Client | None = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> EmulatorServer:
        """Start serving and return once the emulator answers."""
        if self.in_process:
            self._start_thread()
        else:
            self._start_process()
        self._admin = httpx.Client(base_url=self.url, timeout=10.0)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                self._admin.get("/_emulator/config").raise_for_status()
                return self
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.02)

    def _start_thread(self) -> None:
        sock = bind(self.host, self.port)
        self.url = url_of(sock) + self.config.path_prefix
        self.app = create_app(self.config)
        ready = threading.Event()

        async def run() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            ready.set()
            await serve(self.app, sock, self.server, self._stop)  # type: ignore[arg-type]

        self._thread = threading.Thread(target=asyncio.run, args=(run(),), name="flux-redux-emulator", daemon=True)
        self._thread.start()
        ready.wait(self.startup_timeout)

    def _start_process(self) -> None:
        argv = [sys.executable, "-m", "airflow_flux_redux.emulator", "--host", self.host, "--port", str(self.port)]
        argv += ["--server", self.server, *config_to_argv(self.config)]
        env = dict(os.environ)
        if self.config.key is not None:
            env[KEY_ENV] = self.config.key  # not on the command line, where `ps` would show it
        self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        line = _read_line(self._process, self.startup_timeout)
        if not line.startswith(BANNER):
            self.stop()
            raise RuntimeError(f"the emulator subprocess did not start; its first line was {line!r}")
        self.url = line[len(BANNER) :].strip()

    def stop(self) -> None:
        """Stop serving; safe to call twice."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = self._loop = self._stop = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._admin is None:
            raise RuntimeError("the emulator is not running; use it as a context manager or call start()")
        response = self._admin.request(method, path, json=body)
        if response.status_code >= 400:
            raise ValueError(f"emulator admin {path}: HTTP {response.status_code}: {response.text}")
        return response.json()

    def stats(self, summary: bool = False) -> dict[str, Any]:
        """Counters: submissions, per-request polls/cancels, auth failures, requests per route, faults fired."""
        return self._call("GET", "/_emulator/stats" + ("?summary=1" if summary else ""))

    def set_faults(self, faults: list[dict[str, Any] | str]) -> None:
        """Replace the fault rules (dicts, or compact strings such as ``"status:503:times=2"``)."""
        self._call("POST", "/_emulator/faults", {"faults": faults})

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change queue_seconds, run_seconds, result_ttl, keepalive_seconds, log_lines or timings while running."""
        return self._call("POST", "/_emulator/config", changes)

    def reset(self) -> None:
        """Forget all jobs, counters and fault rules (timings stay as configured)."""
        self._call("POST", "/_emulator/reset")

    def sample_image_url(self, width: int = 256, height: int = 256) -> str:
        """An http URL of a gradient PNG served by the emulator itself: an input image with no internet."""
        return f"{self.url}/_emulator/sample.png?width={width}&height={height}"


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The first stdout line, or "" if the process prints nothing in time (it is then left to stop())."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline() if process.stdout else ""))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""
