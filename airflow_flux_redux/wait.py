"""The wait on a queued job, written once and free of I/O: what to do after each status, error and tick.

Three waiters drive one ``WaitPolicy``: the async hook's ``follow`` (the status stream or polling; the
trigger and the operator's in-worker window use it), and the sync hook's ``follow`` (polling). They only
move bytes; the states, the deadline, the window, the errors tolerated and the poll schedule live here.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from airflow_flux_redux.exceptions import (
    FluxReduxCancelledError,
    FluxReduxError,
    FluxReduxJobFailedError,
    FluxReduxProtocolError,
    FluxReduxTimeoutError,
    FluxReduxTransportError,
)
from airflow_flux_redux.models import QueueState, QueueStatus

if TYPE_CHECKING:
    from collections.abc import Callable

WaitMode = Literal["poll", "stream", "auto"]
WAIT_MODES: tuple[str, ...] = ("poll", "stream", "auto")
POSITION_LOG_INTERVAL = 10.0
MAX_ERROR_BACKOFF = 30.0
# Origins whose status stream answered "not served": ``auto`` polls there from the start, so a relay
# without the stream costs no extra connection per wait (one process learns it once per origin).
_NO_STREAM: set[str] = set()
# Origins whose status stream answered with a status: ``auto`` waits there stream at once, without a probe.
_STREAM_SERVED: set[str] = set()


class StreamUnsupportedError(FluxReduxError):
    """The status stream cannot be used: the server does not serve it, or (``busy``) no connection is free."""

    def __init__(self, message: str, *, request_id: str | None = None, busy: bool = False) -> None:
        self.busy = busy
        super().__init__(message, request_id=request_id)


# Errors a wait outlives (up to ``max_consecutive_errors`` in a row); anything else ends it at once.
TOLERATED = (FluxReduxTransportError, FluxReduxProtocolError, StreamUnsupportedError)


def stream_origin(status_url: str) -> str:
    scheme, _, rest = status_url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}".lower()


def raise_if_failed(status: QueueStatus, request_id: str) -> None:
    """A COMPLETED status with an error is a failed job: raise with fal's error type and message."""
    if status.failed:
        error_class = FluxReduxCancelledError if status.error_type == "client_cancelled" else FluxReduxJobFailedError
        raise error_class(
            f"The job failed: {status.error_type or 'error'}: {status.error or 'no detail'}",
            error_type=status.error_type,
            request_id=request_id,
        )


class PollSchedule:
    """When to poll: first after a random part of ``interval``, then every ``interval`` (slower far back in a queue).

    The random start spreads waiters started together (a mapped task, a restarted triggerer) evenly over one
    interval instead of polling in bursts; afterwards each polls exactly once per interval, so a job of
    length L costs L / interval + 1 polls on average and a change is seen at most one interval late.
    """

    def __init__(self, interval: float) -> None:
        self.interval = max(0.05, interval)

    def first_delay(self) -> float:
        return random.uniform(0.0, self.interval)

    def next_delay(self, status: QueueStatus) -> float:
        if status.status is QueueState.IN_QUEUE and (status.queue_position or 0) > 10:
            return min(self.interval * 4, self.interval + 0.5 * (status.queue_position or 0))
        return self.interval


class StatusReporter:
    """Log what changed between statuses: state, queue position, and fal's new log lines.

    Logs only on change (the queue position at most every POSITION_LOG_INTERVAL seconds), so thousands of
    waits do not flood the triggerer's log.
    """

    def __init__(self, log: Any, request_id: str, *, forward_logs: bool = True) -> None:
        self.log = log
        self.request_id = request_id
        self.forward_logs = forward_logs
        self._state: QueueState | None = None
        self._position: int | None = None
        self._position_logged = 0.0
        self._seen_logs = 0

    def __call__(self, status: QueueStatus) -> None:
        queued = status.status is QueueState.IN_QUEUE
        if status.status is not self._state:
            self._state = status.status
            if queued:  # one line for the state and the position it starts at
                self._position, self._position_logged = status.queue_position, time.monotonic()
                self.log.info("fal request %s is IN_QUEUE, queue position %s", self.request_id, self._position)
            else:
                self.log.info("fal request %s is %s", self.request_id, status.status.value)
        elif (
            queued
            and status.queue_position != self._position
            and time.monotonic() >= self._position_logged + POSITION_LOG_INTERVAL
        ):
            # In a long queue the position changes at every poll: one line per interval, not one per poll.
            self._position = status.queue_position
            self._position_logged = time.monotonic()
            self.log.info("fal request %s: queue position %s", self.request_id, status.queue_position)
        if self.forward_logs and status.logs and len(status.logs) > self._seen_logs:
            for entry in status.logs[self._seen_logs :]:
                self.log.info("fal: %s", entry.message)
            self._seen_logs = len(status.logs)


@dataclass
class WaitPolicy:
    """One wait on one request.

    :param request_id: For error messages.
    :param status_url: The status URL being followed (its origin is what ``auto`` remembers).
    :param deadline: Absolute (epoch) time after which the job is cancelled; None waits for ever.
    :param until: Absolute (epoch) time after which the waiter stops and leaves the job running (the
        operator's in-worker window, after which it defers); None for no window.
    :param poll_interval: Seconds between polls.
    :param mode: ``auto`` (the stream where served, else polling), ``stream`` or ``poll``.
    :param max_consecutive_errors: Tolerated failures (after the hook's own retries) in a row.
    :param on_status: Called with every status seen (logging, progress).
    :param logs: Ask for fal's log lines with each status.
    """

    request_id: str
    status_url: str
    deadline: float | None = None
    until: float | None = None
    poll_interval: float = 1.0
    mode: WaitMode = "auto"
    max_consecutive_errors: int = 5
    on_status: Callable[[QueueStatus], None] | None = None
    logs: bool = True
    errors: int = field(default=0, init=False)
    origin: str = field(default="", init=False)
    use_stream: bool = field(default=False, init=False)
    schedule: PollSchedule = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in WAIT_MODES:
            raise FluxReduxError(f"wait_mode: got {self.mode!r}; allowed: {', '.join(WAIT_MODES)}")
        self.origin = stream_origin(self.status_url)
        self.refresh()
        self.schedule = PollSchedule(self.poll_interval)

    def refresh(self) -> None:
        """Take up what other waits learnt about this origin's stream."""
        self.use_stream = self.mode == "stream" or (self.mode == "auto" and self.origin not in _NO_STREAM)

    @property
    def must_probe(self) -> bool:
        """True when ``auto`` does not yet know whether this origin serves the stream (one wait finds out)."""
        return self.mode == "auto" and self.use_stream and self.origin not in _STREAM_SERVED

    def stream_served(self) -> None:
        _STREAM_SERVED.add(self.origin)

    # -- what the waiter saw -----------------------------------------------------------------------------

    def seen(self, status: QueueStatus) -> bool:
        """Record a status; True when the job completed (then the waiter returns it)."""
        self.errors = 0
        if self.on_status is not None:
            self.on_status(status)
        return status.status is QueueState.COMPLETED

    def next_delay(self, status: QueueStatus) -> float:
        return self.schedule.next_delay(status)

    def first_delay(self) -> float:
        """Before the first poll (none before a stream: it reports at once)."""
        return 0.0 if self.use_stream else self.schedule.first_delay()

    def failed(self, error: FluxReduxError) -> float:
        """A failed call: the delay before trying again, or re-raise once too many failed in a row."""
        if isinstance(error, StreamUnsupportedError) and self.mode == "auto":
            if not error.busy:
                _NO_STREAM.add(self.origin)
            self.use_stream = False
            return self.schedule.first_delay()
        if not isinstance(error, TOLERATED):
            raise error
        self.errors += 1
        if self.errors > self.max_consecutive_errors:
            raise error
        return min(MAX_ERROR_BACKOFF, self.poll_interval * 2**self.errors)

    # -- time ---------------------------------------------------------------------------------------------

    @property
    def stop_at(self) -> float | None:
        """When the waiter must stop following: the window's end or the deadline, whichever is first."""
        ends = [t for t in (self.deadline, self.until) if t is not None]
        return min(ends) if ends else None

    def window_over(self, now: float | None = None) -> bool:
        """True when the waiter stopped for the window (leave the job running), not the deadline."""
        now = time.time() if now is None else now
        return self.until is not None and now >= self.until and (self.deadline is None or self.until < self.deadline)

    def sleep_for(self, delay: float, now: float | None = None) -> float:
        """``delay``, cut short so the waiter wakes when it must stop."""
        stop = self.stop_at
        if stop is None:
            return delay
        return max(0.0, min(delay, stop - (time.time() if now is None else now)))

    def after_cancel(self, outcome: str) -> bool:
        """The deadline passed and cancel answered ``outcome``: True when the job may have completed."""
        return outcome == "ALREADY_COMPLETED"

    def timeout_error(self, outcome: str) -> FluxReduxTimeoutError:
        return FluxReduxTimeoutError(
            f"The job did not complete before the deadline; the remote job was asked to cancel ({outcome}).",
            request_id=self.request_id,
        )
