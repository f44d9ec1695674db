"""The example DAGs through real Airflow (``airflow dags test``) against the emulator.

``dags test`` runs the trigger inline after a real serde round trip, and drops the kwargs given to
``defer()``: these runs prove the event alone is enough to resume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_flux_redux.version_compat import AIRFLOW_VERSION
from tests.conftest import API_KEY, connection_json

pytestmark = pytest.mark.airflow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A migrated Airflow home (SQLite) with the example DAGs, shared by the session's DAG runs."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags_examples"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
    }
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True)
    return env


def dags_test(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    if (3, 0, 0) <= AIRFLOW_VERSION < (3, 1, 0):
        # 3.0's dags test leaves an Asset in outlets inactive (the task fails) unless the DAGs were parsed
        # into the DB first; the asset URI comes from this test's env, so parse with it.
        subprocess.run([sys.executable, "-m", "airflow", "dags", "reserialize"], env=env, capture_output=True)
    return subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def without_airflow_30_mask_requests(log: str) -> str:
    """The log less the lines where Airflow 3.0's dags test logs its own ``MaskSecret`` requests.

    Its in-process supervisor logs every request at debug level, the value of the secret to mask included
    (Airflow itself masks each connection's password that way); 3.1 and later mask the value here first.
    """
    if not (3, 0, 0) <= AIRFLOW_VERSION < (3, 1, 0):
        return log
    return "\n".join(line for line in log.splitlines() if "MaskSecret(value=" not in line)


def write_inputs(folder: Path, count: int) -> list[Path]:
    from airflow_flux_redux.emulator.images import sample_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"input-{index}.png"
        path.write_bytes(sample_image(96 + 16 * index, 64))
        paths.append(path)
    return paths


def test_example_a_writes_images(airflow_home, flux_conn, tmp_path) -> None:
    (source,) = write_inputs(tmp_path / "in", 1)
    out = tmp_path / "out"
    env = {
        **airflow_home,
        "AIRFLOW_CONN_FLUX_REDUX_DEFAULT": connection_json(flux_conn.url),
        "FLUX_REDUX_EXAMPLE_IMAGE": str(source),
        "FLUX_REDUX_EXAMPLE_OUTPUT": str(out),
    }
    run = dags_test(env, "example_flux_redux")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    images = sorted(out.rglob("*.png"))
    assert len(images) == 2, log[-4000:]
    from PIL import Image

    assert Image.open(images[0]).size == (512, 512)
    assert flux_conn.stats()["submissions"] == 1
    assert "queue position" in log and "fal: " in log
    assert API_KEY not in without_airflow_30_mask_requests(log)


def test_example_b_maps_over_inputs_under_a_dated_path(airflow_home, flux_conn, tmp_path) -> None:
    sources = write_inputs(tmp_path / "in", 3)
    out = tmp_path / "out"
    env = {
        **airflow_home,
        "AIRFLOW_CONN_FLUX_REDUX_DEFAULT": connection_json(flux_conn.url),
        "FLUX_REDUX_DAILY_IMAGES": ",".join(map(str, sources)),
        "FLUX_REDUX_EXAMPLE_OUTPUT": str(out),
    }
    run = dags_test(env, "example_flux_redux_daily", "2026-11-01")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    dated = out / "daily" / "2026-11-01"
    assert len(list(dated.glob("*.jpg"))) == 3, log[-4000:]
    assert flux_conn.stats()["submissions"] == 3


def test_failed_job_fails_the_task_with_fal_error(airflow_home, flux_conn, tmp_path) -> None:
    (source,) = write_inputs(tmp_path / "in", 1)
    flux_conn.set_faults([{"route": "submit", "kind": "fail_job"}])
    env = {
        **airflow_home,
        "AIRFLOW_CONN_FLUX_REDUX_DEFAULT": connection_json(flux_conn.url),
        "FLUX_REDUX_EXAMPLE_IMAGE": str(source),
        "FLUX_REDUX_EXAMPLE_OUTPUT": str(tmp_path / "out"),
    }
    run = dags_test(env, "example_flux_redux")
    log = run.stdout + run.stderr
    assert "content_policy_violation" in log, log[-4000:]
    assert not list((tmp_path / "out").rglob("*.png"))


def test_invalid_input_fails_before_submit(airflow_home, flux_conn, tmp_path) -> None:
    env = {
        **airflow_home,
        "AIRFLOW_CONN_FLUX_REDUX_DEFAULT": connection_json(flux_conn.url),
        "FLUX_REDUX_EXAMPLE_IMAGE": str(tmp_path / "missing.png"),
        "FLUX_REDUX_EXAMPLE_OUTPUT": str(tmp_path / "out"),
    }
    run = dags_test(env, "example_flux_redux")
    log = run.stdout + run.stderr
    # Airflow 3.0 prints the error in a box wrapped at 80 columns: look for parts short enough to stay whole.
    assert "image_url:" in log and "missing.png" in log and "does not exist; allowed" in log, log[-4000:]
    assert flux_conn.stats()["requests_by_route"].get("submit", 0) == 0


def test_a_file_that_is_no_image_fails_before_submit(airflow_home, flux_conn, tmp_path) -> None:
    env = {
        **airflow_home,
        "AIRFLOW_CONN_FLUX_REDUX_DEFAULT": connection_json(flux_conn.url),
        "FLUX_REDUX_EXAMPLE_IMAGE": "/proc/self/environ",
        "FLUX_REDUX_EXAMPLE_OUTPUT": str(tmp_path / "out"),
    }
    run = dags_test(env, "example_flux_redux")
    log = run.stdout + run.stderr
    assert "image_url: /proc/self/environ is not an image" in log, log[-4000:]
    assert API_KEY not in without_airflow_30_mask_requests(log)  # the file holds it: never quoted
    assert sum(flux_conn.stats()["requests_by_route"].values()) == 0


def test_example_a_through_a_relay_with_fals_urls_defers_and_resumes_from_the_event(airflow_home, tmp_path) -> None:
    """The spec's kind of gateway: answers with queue.fal.run URLs, Bearer key, no status stream.

    The connection holds only the relay's base URL (with a path prefix), its key and Bearer. The job is
    longer than the in-worker window, so the task defers and ``dags test`` resumes it from the event alone.
    """
    from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
    from airflow_flux_redux.operators.flux_redux import DEFAULT_DEFER_AFTER

    (source,) = write_inputs(tmp_path / "in", 1)
    out = tmp_path / "out"
    config = EmulatorConfig(
        key=API_KEY, relay=True, path_prefix="/v1", queue_seconds=1.0, run_seconds=DEFAULT_DEFER_AFTER + 1
    )
    with EmulatorServer(config) as relay:
        conn = {"conn_type": "flux_redux", "host": relay.url, "password": API_KEY, "extra": {"auth_scheme": "Bearer"}}
        env = {
            **airflow_home,
            "AIRFLOW_CONN_FLUX_REDUX_DEFAULT": json.dumps(conn),
            "AIRFLOW__FLUX_REDUX__DEFER_EVENT_HOLD": "0",  # dags test runs the trigger inline: no race to hold off
            "FLUX_REDUX_EXAMPLE_IMAGE": str(source),
            "FLUX_REDUX_EXAMPLE_OUTPUT": str(out),
        }
        run = dags_test(env, "example_flux_redux")
        stats = relay.stats()
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert len(sorted(out.rglob("*.png"))) == 2, log[-4000:]
    assert "deferring" in log, log[-4000:]
    assert stats["submissions"] == 1 and stats["requests_by_route"]["status"] >= 2
    assert API_KEY not in without_airflow_30_mask_requests(log)


@pytest.mark.parametrize("defers", [False, True], ids=["finishes-in-the-worker", "defers-and-resumes"])
def test_example_a_behind_a_proxy_sends_every_request_through_it(airflow_home, tmp_path, defers) -> None:
    """A corporate network: the base URL's host is a name only the proxy resolves, HTTP(S)_PROXY name it.

    A real-speed job (1.5 s) finishes in the worker; a longer one defers and resumes from the trigger's event.
    Either way the job is submitted once and the proxy's log holds every request of it.
    """
    from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
    from airflow_flux_redux.operators.flux_redux import DEFAULT_DEFER_AFTER
    from tests.forward_proxy import ForwardProxy

    (source,) = write_inputs(tmp_path / "in", 1)
    out = tmp_path / "out"
    timing = (1.0, DEFAULT_DEFER_AFTER + 1) if defers else (0.2, 1.3)
    config = EmulatorConfig(key=API_KEY, queue_seconds=timing[0], run_seconds=timing[1])
    with EmulatorServer(config) as emulator:
        port = int(emulator.url.rsplit(":", 1)[1])
        with ForwardProxy({"fal-gw.internal": ("127.0.0.1", port)}) as proxy:
            env = {
                **{k: v for k, v in airflow_home.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")},
                "AIRFLOW_CONN_FLUX_REDUX_DEFAULT": connection_json(f"http://fal-gw.internal:{port}"),
                "AIRFLOW__FLUX_REDUX__DEFER_EVENT_HOLD": "0",
                "HTTP_PROXY": proxy.url,
                "HTTPS_PROXY": proxy.url,
                "FLUX_REDUX_EXAMPLE_IMAGE": str(source),
                "FLUX_REDUX_EXAMPLE_OUTPUT": str(out),
            }
            run = dags_test(env, "example_flux_redux")
            seen = proxy.targets()
        stats = emulator.stats()
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert len(sorted(out.rglob("*.png"))) == 2, log[-4000:]
    assert ("deferring" in log) is defers, log[-4000:]
    assert stats["submissions"] == 1
    # Every request the emulator answered reached it through the proxy, by the name only the proxy knows.
    assert len(seen) == sum(stats["requests_by_route"].values()), (seen, stats["requests_by_route"])
    assert all("//fal-gw.internal:" in target for target in seen), seen
    assert seen[0].startswith("POST ") and sum(t.endswith(".png") for t in seen) == 2
