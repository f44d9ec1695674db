"""The triggerer's cyclic garbage collector, kept off what the process holds while Redux waits wait.

A triggerer holds Airflow's and its providers' imports, hundreds of thousands of long-lived objects, and
each Redux wait holds some 35 more (the trigger, its hook and policy, coroutine frames, its task) for
minutes. Every full collection walks them all while the event loop stops: 110-190 ms with 1,000 waits,
450-480 ms with 10,000, on a 2-core machine, and every trigger of that triggerer is late by as much.
``gc.freeze()`` moves what the process holds to the permanent generation, which collections skip (Airflow
does the same before its executors and DAG processor fork their children). So, while Redux waits are in
flight in a process:

- the first wait freezes what the process holds (the imports, Airflow's state);
- every ``FREEZE_BATCH`` waits started or ended since, the process freezes again: the state of the waits
  started meanwhile, and what the running waits made since that lives on (their last status, their
  gathered lines), which a batch that started at once would otherwise pile up for full collections to
  walk; the young generations are collected first, so their garbage is not frozen with them;
- when the last wait ends, everything is unfrozen (``gc.unfreeze()``): the next full collection, with no
  Redux wait waiting, collects what became garbage meanwhile, and the next wait starts over.

Frozen objects are still freed by reference counting when dropped; only reference cycles among them wait
for the thaw, and the waits make almost none (6 objects in 2,000 waits, counted with the collector off).
``[flux_redux] freeze_gc = False`` (env ``AIRFLOW__FLUX_REDUX__FREEZE_GC``) leaves the collector alone.
"""

from __future__ import annotations

import contextlib
import gc
from typing import TYPE_CHECKING

from airflow.providers.common.compat.sdk import conf

if TYPE_CHECKING:
    from collections.abc import Iterator

# Waits started or ended between two freezes: a full collection walks at most this many waits' state.
FREEZE_BATCH = 256

_in_flight = 0
_unfrozen: int | None = None  # waits started or ended since the last freeze; None: nothing frozen here


@contextlib.contextmanager
def out_of_collection() -> Iterator[None]:
    """Around one wait: freeze as the module says when it starts, thaw when the process's last wait ends."""
    _started()
    try:
        yield
    finally:
        _ended()


def _started() -> None:
    global _in_flight
    _in_flight += 1
    if _unfrozen is not None:
        _count()
    elif conf.getboolean("flux_redux", "freeze_gc", fallback=True):
        _freeze()


def _ended() -> None:
    global _in_flight, _unfrozen
    _in_flight -= 1
    if _unfrozen is None:
        return
    if _in_flight == 0:
        gc.unfreeze()
        _unfrozen = None
    else:
        _count()


def _count() -> None:
    """One more wait started or ended since the last freeze: freeze again once ``FREEZE_BATCH`` have."""
    global _unfrozen
    assert _unfrozen is not None
    if _unfrozen + 1 < FREEZE_BATCH:
        _unfrozen += 1
    else:
        _freeze()


def _freeze() -> None:
    global _unfrozen
    gc.collect(1)
    gc.freeze()
    _unfrozen = 0
