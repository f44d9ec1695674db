"""Real-speed jobs in a real ``airflow standalone``: how long to follow a job in the worker before deferring.

    python benchmarks/bench_fast_jobs.py            # every case below (~12 min, run under flock /tmp/heavy.lock)
    python benchmarks/bench_fast_jobs.py --quick    # three cases (~3 min)

One deployment (tests/e2e/standalone.py: LocalExecutor on PostgreSQL, 8 worker slots per DAG run) runs
24 mapped ``FluxReduxOperator`` tasks per case (the DAGs of tests/e2e/dags/flux_redux_fast_jobs.py), with
the connection's defaults, against the fal-queue emulator in its own process. Cases: jobs of 1.5 s
(0.2 s queue + 1.3 s run, FLUX.1 [schnell] Redux's real speed) and jobs of window + 2 s, for
``defer_after`` in 0 (defer at once: the old behaviour), 5, 10, 20 s, with the trigger's event hold
(``[flux_redux] defer_event_hold``, 10 s) on or off where the task defers. Per case it prints:

- tasks succeeded (no retries: a task Airflow's race fails stays failed), and tasks that deferred;
- task end - job completed, p50/p95: the task's end_date (REST API) minus the job's completion time (the
  emulator's), over the tasks that succeeded; and where it went (p50 of each phase, from the task log):
  job completed -> worker or trigger saw it, -> image saved (for a deferred task: the event hold and the
  resumed worker's start included), -> task ended;
- defer -> worker exit: from the "Pausing task as DEFERRED" line to the exit of the deferring workload
  (the executor's record). Airflow's race (apache/airflow#72716) is open while an event can arrive before
  that exit has been processed: the event hold must outlast it;
- worker seconds per task: the executor's workload durations summed over every phase and try (slot time);
- wall time of the mapped run (its start_date to end_date).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.dags.flux_redux_fast_jobs import BENCH_DEFER_AFTER, MAPPED  # noqa: E402
from tests.e2e.standalone import (  # noqa: E402
    Session,
    first_time,
    log_events,
    mapped_figures,
    percentile,
    wait_parsed,
)

KEY = "bench-key-0123456789abcdef"
QUEUE_SECONDS = 0.2
FAST_RUN_SECONDS = 1.3
TASK_ID = "vary"


@dataclass(frozen=True)
class Case:
    defer_after: int
    hold: bool
    run_seconds: float

    @property
    def dag_id(self) -> str:
        return f"bench_fast_d{self.defer_after}_hold_{'on' if self.hold else 'off'}"

    @property
    def job_seconds(self) -> float:
        return QUEUE_SECONDS + self.run_seconds


def cases(quick: bool) -> list[Case]:
    fast = [Case(0, False, FAST_RUN_SECONDS), Case(0, True, FAST_RUN_SECONDS)]
    fast += [Case(d, True, FAST_RUN_SECONDS) for d in BENCH_DEFER_AFTER if d]  # no deferral: the hold is moot
    late = [Case(d, hold, d + 2 - QUEUE_SECONDS) for d in BENCH_DEFER_AFTER for hold in (False, True)]
    if quick:
        return [Case(0, False, FAST_RUN_SECONDS), Case(10, True, FAST_RUN_SECONDS), Case(10, True, 12 - QUEUE_SECONDS)]
    return fast + late


def _epoch(value: Any) -> float:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def phases(session: Session, dag_id: str, run_id: str, figure: dict[str, Any], done: float) -> dict[str, float]:
    """Where a succeeded task's time after its job completed went, from its last try's log timestamps."""
    d = session.deployment
    events = log_events(d.task_log(dag_id, run_id, TASK_ID, figure["tries"], figure["map_index"]))
    deferred = first_time(events, "Pausing task as DEFERRED")
    seen = first_time(events, "is COMPLETED")
    saved = first_time(events, " done: ")
    ended = done + figure["end_after_job_s"]
    out: dict[str, float] = {}
    if deferred is not None and figure["deferred_exit"]:
        out["exit"] = _epoch(figure["deferred_exit"]) - deferred
    if seen is not None:
        out["seen"] = seen - done
    if saved is not None:
        out["saved"] = saved - (seen if seen is not None else done)
        out["finished"] = ended - saved
    return out


def run_case(session: Session, case: Case) -> dict[str, Any]:
    from tests.e2e.standalone import job_completed_at

    d = session.deployment
    session.reset_emulator(queue_seconds=QUEUE_SECONDS, run_seconds=case.run_seconds)
    run_id = d.trigger(case.dag_id)
    run = d.wait_run(case.dag_id, run_id, ["success", "failed"], timeout=600)
    figures = mapped_figures(session, case.dag_id, run_id, TASK_ID)
    ok = [f for f in figures if f["state"] == "success" and f["end_after_job_s"] is not None]
    late = [f["end_after_job_s"] for f in ok]
    split: dict[str, list[float]] = {"seen": [], "saved": [], "finished": [], "exit": []}
    for f in ok:
        done = job_completed_at(session.emulator.url, f["request_id"], session.api_key)
        for phase, seconds in phases(session, case.dag_id, run_id, f, done).items():
            split[phase].append(seconds)
    return {
        "case": case,
        "succeeded": sum(f["state"] == "success" for f in figures),
        "deferred": sum(f["deferrals"] > 0 for f in figures),
        "submissions": session.emulator.stats(summary=True)["submissions"],
        "p50": percentile(late, 0.5),
        "p95": percentile(late, 0.95),
        "phases": {phase: percentile(values, 0.5) for phase, values in split.items()},
        "exit_max": max(split["exit"], default=None),
        "worker_s": statistics.fmean(f["worker_s"] for f in figures),
        "wall_s": _epoch(run["end_date"]) - _epoch(run["start_date"]),
        "figures": figures,
    }


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| job | defer_after | hold | succeeded | deferred | submissions | end - job p50 / p95 | "
        "seen / saved / finished (p50) | defer → worker exit p50 / max | worker s/task | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        case, ph = row["case"], row["phases"]
        hold = "on" if case.hold else "off"
        lines.append(
            f"| {case.job_seconds:.1f} s | {case.defer_after} s | {hold} | {row['succeeded']}/{MAPPED} | "
            f"{row['deferred']} | {row['submissions']} | {_s(row['p50'])} / {_s(row['p95'])} s | "
            f"{_s(ph['seen'])} / {_s(ph['saved'])} / {_s(ph['finished'])} s | "
            f"{_s(ph['exit'])} / {_s(row['exit_max'])} s | {row['worker_s']:.1f} | "
            f"{row['wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="three cases instead of all")
    parser.add_argument("--json", type=Path, help="also write every per-task figure here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-fast-jobs-"))

    def connection(url: str) -> str:  # a user's connection: every setting at its default
        return json.dumps({"conn_type": "flux_redux", "host": url, "password": KEY})

    # A killed benchmark must still stop airflow standalone and the emulator (Session.stop in the finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    session = Session(root, KEY, connection, mapped=MAPPED)
    rows = []
    try:
        wait_parsed(session.deployment, sorted({case.dag_id for case in cases(args.quick)}))
        print(f"airflow standalone up in {session.deployment.startup_seconds:.0f} s ({root})", flush=True)
        for case in cases(args.quick):
            row = run_case(session, case)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    finally:
        session.stop()
    print(
        f"\nbench_fast_jobs: 2 cores, {MAPPED} mapped tasks per case, 8 worker slots, LocalExecutor on PostgreSQL, "
        f"jobs queue {QUEUE_SECONDS} s; {time.monotonic() - started:.0f} s in all\n"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([{**row, "case": vars(row["case"])} for row in rows], indent=1))


if __name__ == "__main__":
    main()
