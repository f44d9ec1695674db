"""The triggerer's cyclic garbage collector, told once to skip what the process held before its first wait.

A triggerer holds Airflow's and its providers' imports: hundreds of thousands of long-lived objects that
every full collection walks while the event loop waits (110-190 ms per collection with 1,000 Redux waits on a
2-core machine, so every trigger of that triggerer is late by as much; Airflow warns when its loop is blocked
for 0.2 s). ``gc.freeze()`` moves them to the permanent generation, as Airflow itself does before its
executors and DAG processor fork their children; later collections walk only newer objects (the longest
fell to 24-33 ms in benchmarks/bench_queue.py). Objects frozen are never collected, so it runs once per
process, at the first Redux wait. ``[flux_redux] freeze_gc = False`` (env ``AIRFLOW__FLUX_REDUX__FREEZE_GC``)
turns it off.
"""

from __future__ import annotations

import gc

from airflow.providers.common.compat.sdk import conf

_FROZEN = False


def freeze_once() -> None:
    """Freeze the process's objects the first time a wait starts here, unless the setting turns it off."""
    global _FROZEN
    if _FROZEN:
        return
    _FROZEN = True
    if conf.getboolean("flux_redux", "freeze_gc", fallback=True):
        gc.freeze()
