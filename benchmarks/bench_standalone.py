"""N mapped ``FluxReduxOperator`` tasks on a real Airflow against fal's concurrency limit, two provider versions.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_standalone.py          # N = 200, C = 4 (~5 min)
    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_standalone.py --c 1    # a deep queue (~12 min)
    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_standalone.py --backlog 300  # the account busy (~12 min)
    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_standalone.py --n 50 --only after

Issue 18: a deep-queued job must not hold a worker slot for the whole in-worker window. Per version, a fresh
``airflow standalone`` on PostgreSQL (tests/e2e/standalone.py's ``Deployment``: scheduler with LocalExecutor,
triggerer, its parallelism) runs one DAG (benchmarks/dags/bench_scale.py) that maps N tasks, every operator
default (deferrable, ``defer_after`` 10 s, ``poll_interval`` 1 s), 64x64 images, against the fal-queue
emulator in its own process with ``concurrency_limit`` C and jobs of ``run_seconds`` (no queue time of
their own): the batch cannot end sooner than N x run / C. ``--backlog K``: just before the DAG run, K jobs of
another client on the same key (fal's limit is the account's, across all its endpoints and users) fill
fal's queue, so every task's job starts deep in it, as on a busy account; the floor is then (K + N) x run / C.
Versions:

- ``before``: the provider at ``--before-ref`` (5fe8c74, before the queue-aware waits), extracted with
  ``git archive`` and put first on every component's PYTHONPATH;
- ``after``: the working tree (or ``--after-ref``).

A first task of the DAG reports the ``airflow_flux_redux`` the workers imported. Figures: tasks succeeded,
submissions (the emulator's count; one per task), worker seconds per task (the executor's workload durations,
both phases), the first phase of tasks whose job was deep in the queue at submit (the operator's "queue
position N" line; deep: too far back to finish within the 10 s window at C / run jobs a second, the issue's
words): up to the deferral, or the whole task if it did not defer (target <= 3 s); wall from the
first task's start to the last one's end against the floor; and the executor's slots: ``[core] parallelism``
(the harness's), the DAG's ``max_active_tasks`` (Airflow's default), and the most workloads running at once
(process start to supervisor exit: a finished task's supervisor may still be exiting while the next task
starts, so this can pass max_active_tasks). Logs and per-task figures stay in a temporary folder (printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.standalone import Deployment, log_events, percentile, worker_slot_seconds  # noqa: E402

KEY = "bench-key-0123456789abcdef"
DAG_FILE = Path(__file__).resolve().parent / "dags" / "bench_scale.py"
DAG_ID, TASK_ID = "bench_scale", "vary"
SUBMITTED = re.compile(r"Submitted fal request (\S+) \(queue position (\d+)\)")
SLOT_TARGET = 3.0
WINDOW = 10.0  # the operator's default defer_after


@dataclass
class Task:
    """One mapped task: its state, its submission(s) and the slot time of each worker phase."""

    index: int
    state: str
    submits: int
    position: int | None
    deferred: bool
    first_phase_s: float | None  # the executor's record of the phase that submitted (to deferral or the end)
    submit_to_defer_s: float | None
    worker_s: float  # every workload of the task
    start: float | None
    end: float | None


def _epoch(value: Any) -> float | None:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() if value else None


def provider_tree(ref: str | None, root: Path) -> Path:
    """The folder holding ``airflow_flux_redux`` at ``ref`` (None: the working tree)."""
    if ref is None:
        return ROOT
    dest = root / f"provider-{ref}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "airflow_flux_redux"], capture_output=True)
    archive.check_returncode()
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def describe(ref: str | None) -> str:
    """``ref`` as given, or the working tree's commit and whether the provider has uncommitted changes."""
    if ref is not None:
        return ref
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "airflow_flux_redux"], capture_output=True)
    return f"working tree ({head.stdout.strip()}{' + uncommitted changes' if dirty.stdout else ''})"


def task_figures(d: Deployment, run_id: str, ti: dict[str, Any]) -> Task:
    entries = d.task_log(DAG_ID, run_id, TASK_ID, max(1, ti["try_number"]), ti["map_index"])
    submits = [m for e in log_events(entries) if (m := SUBMITTED.search(e["event"]))]
    slot = worker_slot_seconds(entries, ti, d)  # waits for the executor's record of the final phase
    workloads = d.workloads(ti["id"])
    deferred = slot["defer_workload_s"] is not None
    return Task(
        index=ti["map_index"],
        state=ti["state"],
        submits=len(submits),
        position=int(submits[0].group(2)) if submits else None,
        deferred=deferred,
        first_phase_s=slot["defer_workload_s"] if deferred else slot["resume_workload_s"],
        submit_to_defer_s=slot["submit_to_defer_s"],
        worker_s=round(sum(w["duration_s"] for w in workloads), 3),
        start=_epoch(ti["start_date"]),
        end=_epoch(ti["end_date"]),
    )


def mapped_instances(d: Deployment, run_id: str) -> list[dict[str, Any]]:
    """Every mapped task instance of the run, page by page (the API serves at most 100 at a time)."""
    found: list[dict[str, Any]] = []
    while True:
        page = d.api(
            "GET",
            f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK_ID}/listMapped",
            params={"limit": 100, "offset": len(found), "order_by": "map_index"},
        )
        found += page["task_instances"]
        if not page["task_instances"] or len(found) >= page["total_entries"]:
            return found


def peak_slots(d: Deployment, ti_ids: list[str]) -> int:
    """The most worker phases of these task instances running at once (the executor's records)."""
    edges: list[tuple[float, int]] = []
    for ti_id in ti_ids:
        for w in d.workloads(ti_id):
            end = _epoch(w["finished"]) or 0.0
            edges += [(end - w["duration_s"], 1), (end, -1)]
    running = peak = 0
    for _, step in sorted(edges):
        running += step
        peak = max(peak, running)
    return peak


def fill_queue(url: str, png: bytes, jobs: int) -> None:
    """``jobs`` submissions of another client on the benchmark's key, ahead of the DAG's (``--backlog``)."""
    import base64

    import httpx

    image = "data:image/png;base64," + base64.b64encode(png).decode()
    with httpx.Client(base_url=url, headers={"Authorization": f"Key {KEY}"}) as http:
        for _ in range(jobs):
            http.post("/fal-ai/flux-1/schnell/redux", json={"image_url": image}).raise_for_status()


def run_version(name: str, ref: str | None, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
    from airflow_flux_redux.emulator.images import sample_image

    work = root / name
    work.mkdir()
    image = work / "input.png"
    image.write_bytes(sample_image(64, 64))
    tree = provider_tree(ref, work)
    config = EmulatorConfig(key=KEY, queue_seconds=0.0, run_seconds=args.run_seconds, concurrency_limit=args.c)
    started = time.monotonic()
    with EmulatorServer(config, in_process=False) as emulator:
        connection = {"conn_type": "flux_redux", "host": emulator.url, "password": KEY}  # every default
        env = {
            "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(tree), str(ROOT)])),
            "AIRFLOW_CONN_FLUX_REDUX_DEFAULT": json.dumps(connection),
            "FLUX_REDUX_BENCH_N": str(args.n),
            "FLUX_REDUX_EXAMPLE_IMAGE": str(image),
            "FLUX_REDUX_EXAMPLE_OUTPUT": str(work / "out"),
        }
        with Deployment(work / "deployment", dag_files=[DAG_FILE], env=env, dag_ids=[DAG_ID]) as d:
            print(f"{name}: airflow standalone up in {d.startup_seconds:.0f} s ({work})", flush=True)
            fill_queue(emulator.url, image.read_bytes(), args.backlog)
            run_id = d.trigger(DAG_ID)
            d.wait_run(DAG_ID, run_id, ["success", "failed"], timeout=args.timeout)
            print(f"{name}: run ended after {time.monotonic() - started:.0f} s; collecting", flush=True)
            imported = d.xcom(DAG_ID, run_id, "provider")
            imported["from_tree"] = Path(imported["file"]).parent.parent == tree
            print(f"{name}: the workers imported {imported['file']}", flush=True)
            tis = mapped_instances(d, run_id)
            tasks = [task_figures(d, run_id, ti) for ti in tis]
            stats = emulator.stats()
            details = d.api("GET", f"dags/{DAG_ID}/details")
            peak = peak_slots(d, [ti["id"] for ti in tis])
            parallelism = d.env["AIRFLOW__CORE__PARALLELISM"]
    return {
        "name": name,
        "ref": describe(ref),
        "imported": imported,
        "tasks": tasks,
        "submissions": stats["submissions"] - args.backlog,
        "status_polls": sum(job["status_polls"] for job in stats["requests"].values()),
        "stream_opens": sum(job["stream_opens"] for job in stats["requests"].values()),
        "parallelism": parallelism,
        "max_active_tasks": details.get("max_active_tasks"),
        "peak_slots": peak,
        "seconds": time.monotonic() - started,
    }


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    return " / ".join(f"{percentile(values, share):.1f}" for share in (0.5, 0.95, 1.0))


def rows(result: dict[str, Any], args: argparse.Namespace) -> dict[str, str]:
    tasks: list[Task] = result["tasks"]
    ok = sum(t.state == "success" for t in tasks)
    deep = [t for t in tasks if t.position is not None and t.position >= args.deep]
    deep_slots = [t.first_phase_s for t in deep if t.first_phase_s is not None]
    starts = [t.start for t in tasks if t.start is not None]
    ends = [t.end for t in tasks if t.end is not None]
    floor = (args.backlog + args.n) * args.run_seconds / args.c
    wall = f"{max(ends) - min(starts):.0f} s" if starts and ends else "-"
    imported = result["imported"]
    return {
        "provider": result["ref"],
        "workers imported it / queue-aware waits": (
            f"{'yes' if imported['from_tree'] else 'NO'} / {'yes' if imported['queue_aware'] else 'no'}"
        ),
        "tasks succeeded / failed": f"{ok} / {len(tasks) - ok} of {args.n}",
        "submissions (emulator) / per task": (
            f"{result['submissions']} / max {max((t.submits for t in tasks), default=0)} "
            f"({sum(t.submits != 1 for t in tasks)} tasks != 1)"
        ),
        "tasks deferred": str(sum(t.deferred for t in tasks)),
        "queue position at submit p50/p95/max": _stats([float(t.position) for t in tasks if t.position is not None]),
        "worker s/task, both phases p50/p95/max": _stats([t.worker_s for t in tasks]),
        "worker s, all tasks": f"{sum(t.worker_s for t in tasks):.0f}",
        f"deep (position >= {args.deep}) tasks / deferred": f"{len(deep)} / {sum(t.deferred for t in deep)}",
        "deep: first-phase slot s p50/p95/max": _stats(deep_slots),
        "deep: submit -> defer s p50/p95/max": _stats(
            [t.submit_to_defer_s for t in deep if t.submit_to_defer_s is not None]
        ),
        f"deep: slot > {SLOT_TARGET:.0f} s (target: none)": str(sum(s > SLOT_TARGET for s in deep_slots)),
        "status polls / streams per task": (
            f"{result['status_polls'] / max(1, len(tasks)):.1f} / {result['stream_opens'] / max(1, len(tasks)):.1f}"
        ),
        "wall first start -> last end": f"{wall} (floor {floor:.0f} s)",
        "parallelism / max_active_tasks / peak": (
            f"{result['parallelism']} / {result['max_active_tasks']} / {result['peak_slots']} workloads at once"
        ),
        "version run (start-up included)": f"{result['seconds']:.0f} s",
    }


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    columns = [{"": result["name"], **rows(result, args)} for result in results]
    labels = list(columns[0])
    widths = [max(len(label) for label in labels)] + [max(len(value) for value in c.values()) for c in columns]
    lines = []
    for label in labels:
        cells = [label, *(column[label] for column in columns)]
        lines.append(" | ".join(f"{cell:<{width}}" for cell, width in zip(cells, widths, strict=True)).rstrip())
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="mapped tasks")
    parser.add_argument("--c", type=int, default=4, help="fal's account concurrency limit (the emulator's)")
    parser.add_argument("--run-seconds", type=float, default=1.5, help="each job's run time")
    parser.add_argument(
        "--deep",
        type=int,
        help="queue position at submit from which a job is deep (default: the first whose job cannot finish within "
        "the operator's 10 s window, (10 - run) x C / run)",
    )
    parser.add_argument("--backlog", type=int, default=0, help="jobs of another client queued ahead of the DAG's")
    parser.add_argument("--only", choices=["before", "after"], help="run one version")
    parser.add_argument("--before-ref", default="5fe8c74")
    parser.add_argument("--after-ref", help="a commit instead of the working tree")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for one DAG run")
    args = parser.parse_args()
    if args.deep is None:
        args.deep = math.ceil((WINDOW - args.run_seconds) * args.c / args.run_seconds)
    root = Path(tempfile.mkdtemp(prefix="bench-standalone-"))
    # A killed benchmark must still stop airflow standalone and the emulator (their context managers).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    versions = {"before": args.before_ref, "after": args.after_ref}
    results = [run_version(name, ref, root, args) for name, ref in versions.items() if args.only in (None, name)]
    (root / "tasks.json").write_text(
        json.dumps([{**r, "tasks": [asdict(t) for t in r["tasks"]]} for r in results], indent=1, default=str)
    )
    print(
        f"\nbench_standalone: N = {args.n}, C = {args.c}, backlog {args.backlog}, jobs of {args.run_seconds} s "
        f"(no queue time), 64x64, "
        f"operator defaults; {os.cpu_count()} cores; {time.monotonic() - started:.0f} s in all; per task: "
        f"{root / 'tasks.json'}\n"
    )
    print(table(results, args))


if __name__ == "__main__":
    main()
