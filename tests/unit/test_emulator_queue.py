"""The emulator queues like fal: a per-key concurrency limit over all endpoints, FIFO dispatch, positions, cancels.

fal (docs.fal.ai, "Concurrency limits"): an account has at most C requests IN_PROGRESS, across all its
endpoints; the others wait IN_QUEUE with ``queue_position`` = the requests ahead, dispatched FIFO as slots free.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx
import pytest

from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
from airflow_flux_redux.emulator.cli import build_parser, config_from_args

if TYPE_CHECKING:
    from collections.abc import Iterator

IMAGE = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
REDUX = "/fal-ai/flux-1/schnell/redux"
DEV_REDUX = "/fal-ai/flux-1/dev/redux"
RUN = 0.6


@pytest.fixture(scope="module")
def limited() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(concurrency_limit=2, queue_seconds=0.0, run_seconds=RUN, log_lines=1)
    with EmulatorServer(config) as server:
        yield server


@pytest.fixture
def emu(limited: EmulatorServer) -> EmulatorServer:
    limited.reset()
    return limited


def client(emu: EmulatorServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=emu.url, headers={"Authorization": f"Key {key}"}, timeout=10)


def submit(http: httpx.Client, path: str = REDUX) -> dict[str, object]:
    answer = http.post(path, json={"image_url": IMAGE, "image_size": {"width": 8, "height": 8}})
    answer.raise_for_status()
    return answer.json()


def watch(http: httpx.Client, jobs: list[dict[str, object]], seconds: float) -> set[str]:
    """Poll every job for ``seconds``: the ids seen running or done."""
    started: set[str] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(started) < len(jobs):
        for job in jobs:
            if http.get(str(job["status_url"])).json()["status"] != "IN_QUEUE":
                started.add(str(job["request_id"]))
        time.sleep(0.02)
    return started


def most_running(runs: list[tuple[float, float]]) -> int:
    """The most jobs IN_PROGRESS at one instant, from (started, finished) times the server recorded.

    A client cannot count this itself: one sweep of status calls spans time, so on a busy machine it sees a job
    still running and, a little later, the job that took its slot (four "running" under a limit of two).
    """
    return max(sum(start <= at < finish for start, finish in runs) for at, _ in runs)


def test_jobs_over_the_limit_wait_in_queue_and_start_fifo_with_positions_counting_jobs_ahead(
    emu: EmulatorServer,
) -> None:
    with client(emu, "account-a") as http:
        jobs = [submit(http) for _ in range(6)]
        # Two run at once; the others wait, each with the number of jobs ahead of it.
        assert [job["queue_position"] for job in jobs] == [0, 0, 0, 1, 2, 3]
        assert http.get(str(jobs[5]["status_url"])).json()["queue_position"] == 3
        ids = [str(job["request_id"]) for job in jobs]
        assert watch(http, jobs, 4 * RUN + 2) == set(ids)  # every job ran, seen through its status
    recorded = emu.stats()["requests"]
    runs = [(recorded[i]["started_at"], recorded[i]["finished_at"]) for i in ids]
    assert most_running(runs) == 2
    assert [start for start, _ in runs] == sorted(start for start, _ in runs)  # FIFO
    # Dispatched in waves of two, one run apart: the limit, not an even spread, sets the pace.
    assert runs[4][0] - runs[0][0] > 1.5 * RUN


def test_the_limit_is_shared_by_all_endpoints_of_one_key(emu: EmulatorServer) -> None:
    with client(emu, "account-a") as http:
        first, second = submit(http, REDUX), submit(http, DEV_REDUX)
        third = submit(http, DEV_REDUX)
    assert (first["queue_position"], second["queue_position"], third["queue_position"]) == (0, 0, 0)
    with client(emu, "account-a") as http:
        assert http.get(str(third["status_url"])).json()["status"] == "IN_QUEUE"
        fourth = submit(http, REDUX)
        assert fourth["queue_position"] == 1  # behind the dev/redux job: one queue per account


def test_another_key_does_not_wait_behind_a_full_account(emu: EmulatorServer) -> None:
    with client(emu, "account-a") as busy:
        for _ in range(5):
            submit(busy)
    with client(emu, "account-b") as other:
        job = submit(other)
        assert job["queue_position"] == 0
        assert other.get(str(job["status_url"])).json()["status"] == "IN_PROGRESS"
    assert emu.stats(summary=True)["queue_length"] == 3


def test_cancelling_a_queued_job_moves_the_jobs_behind_it_up(emu: EmulatorServer) -> None:
    with client(emu, "account-a") as http:
        jobs = [submit(http) for _ in range(5)]  # two running, three queued at positions 0, 1, 2
        assert http.put(str(jobs[2]["cancel_url"])).json()["status"] == "CANCELLATION_REQUESTED"
        assert http.get(str(jobs[3]["status_url"])).json()["queue_position"] == 0
        assert http.get(str(jobs[4]["status_url"])).json()["queue_position"] == 1
        # The cancelled job's place goes to the next in line: job 4 starts with the first wave's end (after
        # one run), not with the second (after two runs) as it would have without the cancel.
        started = watch(http, jobs[3:], 1.5 * RUN)
    assert started == {str(jobs[3]["request_id"]), str(jobs[4]["request_id"])}


def test_cancelling_a_running_job_frees_its_slot_at_once(emu: EmulatorServer) -> None:
    with client(emu, "account-a") as http:
        jobs = [submit(http) for _ in range(3)]
        assert http.get(str(jobs[2]["status_url"])).json()["status"] == "IN_QUEUE"
        http.put(str(jobs[0]["cancel_url"])).raise_for_status()
        assert http.get(str(jobs[2]["status_url"])).json()["status"] == "IN_PROGRESS"


def test_a_status_stream_sees_its_job_move_up_when_one_ahead_is_cancelled(emu: EmulatorServer) -> None:
    emu.configure(run_seconds=3.0)
    with client(emu, "account-a") as http:
        jobs = [submit(http) for _ in range(4)]
        seen: list[str] = []
        with http.stream("GET", f"{jobs[3]['status_url']}/stream") as stream:
            lines = stream.iter_lines()
            seen.append(next(line for line in lines if line.startswith("data:")))
            http.put(str(jobs[2]["cancel_url"])).raise_for_status()
            asked = time.monotonic()
            seen.append(next(line for line in lines if line.startswith("data:")))
            answered = time.monotonic()
    assert '"queue_position":1' in seen[0] and '"queue_position":0' in seen[1]
    assert answered - asked < 1.0  # woken by the cancel, not at the next start 3 s later


def test_workers_is_the_old_name_of_the_concurrency_limit() -> None:
    assert EmulatorConfig(workers=3) == EmulatorConfig(concurrency_limit=3)
    assert EmulatorConfig(workers=3).concurrency_limit == 3
    parsed = [config_from_args(build_parser().parse_args([flag, "4"])) for flag in ("--workers", "--concurrency-limit")]
    assert parsed[0] == parsed[1] and parsed[0].concurrency_limit == 4
    with pytest.raises(ValueError, match="workers is the old name"):
        EmulatorConfig(workers=3, concurrency_limit=5)
    with pytest.raises(ValueError, match="concurrency_limit must be at least 1"):
        EmulatorConfig(concurrency_limit=0)
