"""Shared fixtures: a real emulator on loopback and an Airflow connection pointing at it."""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

import pytest

# Airflow reads its home at import time: give the test session its own before anything imports it.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="flux-redux-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "false")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "true")

from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer

if TYPE_CHECKING:
    from collections.abc import Iterator

API_KEY = "test-key-0123456789abcdef-SECRET"


def png_data_uri(width: int = 64, height: int = 48) -> str:
    """A small gradient image as a data: URI, so no test needs the internet."""
    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata([(x * 4 % 256, y * 5 % 256, (x + y) % 256) for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# -- a minimal task context for operator tests (real Airflow runs are in tests/e2e) ---------------------


class TaskInstance:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}
        self.stats_tags: dict[str, str] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class StateStore:
    """The two calls of ``task_state_store`` the operator relies on, kept in a dict."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, **_: Any) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def context(store: StateStore | None = None) -> dict[str, Any]:
    return {"ti": TaskInstance(), "task_state_store": store if store is not None else StateStore()}


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[EmulatorServer]:
    server = EmulatorServer(EmulatorConfig(key=API_KEY, queue_seconds=0.05, run_seconds=0.2, log_lines=3))
    with server:
        yield server


@pytest.fixture
def emulator(emulator_session: EmulatorServer) -> Iterator[EmulatorServer]:
    """The session's emulator, reset (jobs, counters, faults, timings) for each test."""
    emulator_session.reset()
    emulator_session.configure(queue_seconds=0.05, run_seconds=0.2, log_lines=3, result_ttl=3600)
    yield emulator_session
    emulator_session.reset()


def connection_json(url: str, **extra: Any) -> str:
    settings = {"max_retries": 3, "retry_initial_wait": 0.01, "retry_max_wait": 0.2, "timeout": 5, **extra}
    return json.dumps({"conn_type": "flux_redux", "host": url, "password": API_KEY, "extra": settings})


@pytest.fixture
def flux_conn(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """``flux_redux_default`` pointing at the emulator, with fast retries."""
    monkeypatch.setenv("AIRFLOW_CONN_FLUX_REDUX_DEFAULT", connection_json(emulator.url))
    monkeypatch.delenv("FAL_KEY", raising=False)
    return emulator


@pytest.fixture
def image_uri() -> str:
    return png_data_uri()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]):
    """Everything logged so far, wherever Airflow's logging sent it (stdlib records or structlog output)."""
    caplog.set_level("DEBUG")

    def read() -> str:
        captured = capfd.readouterr()
        return caplog.text + captured.out + captured.err

    return read


def one_log_record(request: str, *, queue_seen: bool = True) -> str:
    """A pattern: a wait's states and fal's lines as one record, in order (separate records would carry a
    timestamp and a logger name between the lines). ``queue_seen=False``: the IN_QUEUE line may be missing
    (a worker's first look, a poll interval after the submit, may already see the job running)."""
    queued = rf"fal request {request} is IN_QUEUE, queue position 0\n"
    running = rf"fal request {request} is IN_PROGRESS\n(fal: [^\n]+\n)+fal request {request} is COMPLETED"
    return (queued if queue_seen else f"({queued})?") + running


@pytest.fixture
def times_logged(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]):
    """How many times a text was logged so far. Depending on the Airflow version a record reaches the stdlib
    handlers (caplog), structlog's output (stdout/stderr) or both: each sink is counted alone, not summed."""
    caplog.set_level("DEBUG")

    def count(text: str) -> int:
        captured = capfd.readouterr()
        return max(caplog.text.count(text), (captured.out + captured.err).count(text))

    return count


@pytest.fixture(autouse=True)
def _forget_stream_support() -> Iterator[None]:
    """``auto`` remembers per process which origins do not serve the stream; each test starts afresh."""
    from airflow_flux_redux import wait

    for learnt in (wait._NO_STREAM, wait._STREAM_SERVED):
        learnt.clear()
    yield
    for learnt in (wait._NO_STREAM, wait._STREAM_SERVED):
        learnt.clear()
