"""How long the operator holds its worker slot for a job in fal's queue, by the job's place in it.

    python benchmarks/bench_window.py                      # C = 1 and 2, 4 to 30 jobs ahead (~3 min)
    python benchmarks/bench_window.py --c 2 --ahead 10,12,14 --reps 3

Issue 18: a job that cannot finish within the in-worker window (``defer_after``, 10 s) must defer at once
instead of holding the slot; one that can must finish in the worker, as real-speed jobs do. Per row, the
emulator (in this process's thread, queueing like fal's account limit C, 1.5 s jobs) first gets C jobs
that run and ``ahead`` jobs that queue; then ``FluxReduxOperator.execute()`` (every default) submits ours
behind them, and the row times it from the submit to ``TaskDeferred`` or to its result. The drain rate is
forgotten before each row, as in a fresh worker process. Printed: when the job's own run ends (from the
submit: every job of 1.5 s, C at once, FIFO), whether that is past the window (deep), what the operator did
and how long it held the slot.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN = 1.5
WINDOW = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--c", default="1,2", help="fal's account limits to try, comma-separated")
    parser.add_argument("--ahead", default="4,6,8,10,12,14,16,20,30", help="jobs queued ahead of ours")
    parser.add_argument("--reps", type=int, default=1, help="runs per row")
    args = parser.parse_args()

    import httpx
    from airflow.providers.common.compat.sdk import TaskDeferred

    from airflow_flux_redux import wait
    from airflow_flux_redux.emulator import EmulatorConfig, EmulatorServer
    from airflow_flux_redux.operators.flux_redux import FluxReduxOperator
    from tests.conftest import API_KEY, connection_json, context, png_data_uri

    image = png_data_uri()
    print(f"bench_window: 1.5 s jobs, defer_after {WINDOW:.0f} s (the operator's defaults), poll_interval 1 s")
    print(f"{'C':>3}{'ahead':>7}{'its end':>9}{'deep':>6}  {'outcome':<10}{'held':>7}")
    for c in (int(v) for v in args.c.split(",")):
        config = EmulatorConfig(key=API_KEY, concurrency_limit=c, queue_seconds=0.0, run_seconds=RUN)
        with EmulatorServer(config) as emulator:
            os.environ["AIRFLOW_CONN_FLUX_REDUX_DEFAULT"] = connection_json(emulator.url)
            for ahead in (int(v) for v in args.ahead.split(",")):
                for _ in range(args.reps):
                    emulator.reset()
                    wait._DRAIN.clear()  # a fresh worker process knows no pace
                    with httpx.Client(base_url=emulator.url, headers={"Authorization": f"Key {API_KEY}"}) as http:
                        for _ in range(c + ahead):
                            http.post("/fal-ai/flux-1/schnell/redux", json={"image_url": image}).raise_for_status()
                    ends = (1 + ahead // c) * RUN + RUN
                    started = time.monotonic()
                    try:
                        with contextlib.redirect_stdout(io.StringIO()):  # the task log; the rows are what we print
                            FluxReduxOperator(task_id="t", image_url=image).execute(context())
                        outcome = "finished"
                    except TaskDeferred:
                        outcome = "deferred"
                    held = time.monotonic() - started
                    deep = "yes" if ends > WINDOW else "no"
                    print(f"{c:>3}{ahead:>7}{ends:>8.1f}s{deep:>6}  {outcome:<10}{held:>6.2f}s", flush=True)


if __name__ == "__main__":
    main()
