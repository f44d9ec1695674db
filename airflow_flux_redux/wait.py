"""The wait on a queued job, written once and free of I/O: what to do after each status, error and tick.

Three waiters drive one ``WaitPolicy``: the async hook's ``follow`` (the status stream or polling; the
trigger and the operator's in-worker window use it), and the sync hook's ``follow`` (polling). They only
move bytes; the states, the deadline, the window, the errors tolerated and the poll schedule live here.

**Waiting the way fal queues.** An account runs at most C jobs at once (2 to 40); the others wait
``IN_QUEUE`` with ``queue_position`` = the jobs ahead, dispatched FIFO. A queue drains at about C / R
jobs a second (R: a job's run time), so a job at position p starts in about (p + 1) / rate seconds. Every
wait of a process reports the positions it sees to one ``DrainRate`` per queue (origin and endpoint of
the status URL): positions falling over time are the rate. The rule (``PollSchedule.next_delay``):

- a running job, a job next in line (position 0) and a job whose position is unknown are looked at every
  ``poll_interval``;
- a queued job looks again after half its predicted start (``LOOK_FRACTION``), but not further ahead than
  twice the time this process has watched the queue (``TRUST_AHEAD``), and always between
  ``poll_interval`` and ``max_poll_interval`` (default 60 s): looks get denser as the start nears, and from
  2 x ``poll_interval`` before it the job is looked at every ``poll_interval``; so completion is seen
  within ``poll_interval`` (plus one request's time) when the estimate holds;
- no queue is assumed to drain faster than ``FASTEST_DRAIN`` jobs a second (40 one-second jobs at once,
  fal's largest self-serve limit, with room), so a job at position p can always wait half of
  (p + 1) / ``FASTEST_DRAIN`` seconds (same bounds): that is its look until some position has fallen (the
  rate is unknown), and the least it waits however briefly the queue has been watched (a batch of 10,000
  just submitted does not look every second while the estimate builds up);
- the status stream (``auto``) is opened only for a job that runs, is next in line, or is predicted to
  start within ``STREAM_LEAD`` x ``poll_interval`` (``WaitPolicy.stream_now``): deep-queued waits hold no
  connection, and the ones near the head see their start and end in milliseconds.

Why: polling every queued job every second costs the triggerer (and fal) a call per job per second where
most calls only read a position that was predictable; a stream per queued job holds a connection for
minutes (10,000 sockets for 10,000 waits). Looking at half the predicted start bounds what a wrong
estimate costs:

- **a job that jumps ahead** (jobs ahead cancelled in bulk, the limit raised): a start up to 2x sooner
  than predicted is still caught before it happens; beyond that, completion is seen at most
  ``max_poll_interval`` late, and by the next look the other waits have taught the estimate the new pace.
- **a stalled queue** (positions stop falling): the rate fades towards zero and looks stretch to
  ``max_poll_interval``, no further; the job next in line is still looked at every ``poll_interval``. When
  the queue moves again, a job that starts and ends within one long delay is seen at most that late.
- **a position that grows** (requests overtaking, e.g. fal's queue priority): counted as no progress,
  never as a negative rate; the job's looks stretch, bounded as above.
- **a cancelled neighbour**: the jobs behind it move up one place sooner than predicted, well inside the
  margin that looking at half the predicted start leaves.

The in-worker window uses the same estimate: a job that cannot end before the window ends closes the
window at once (the operator defers instead of holding its worker slot). A job ends no sooner than the one
behind it starts: fal dispatches one job per R / C seconds, and the job's own run (R) lasts at least that
long since C >= 1; so a job at position p ends no sooner than (p + 2) / rate seconds from now. The rate is
the looks' optimistic one, so a job that could end within the window is not sent away (a window on the
pace as seen decided sooner but deferred such jobs: benchmarks/README.md). Until the queue is seen to
move, only a job too deep to end within the window at ``FASTEST_DRAIN`` closes it (from the submit's
answer, without a poll). In the window a job is looked at every ``poll_interval`` whatever its position:
those looks decide whether it leaves the worker, and are few (a window lasts seconds, a worker runs few).

The position a wait saw last is handed on (the operator's submit to its window, the deferring worker to
the trigger): the next wait's first look is planned from it, so a batch of deep jobs that defers together
does not poll all at once in the triggerer.
"""

from __future__ import annotations

import math
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
# Gathered lines (states of a short job, fal's own) wait at most this long for a record (StatusReporter).
FAL_LOG_INTERVAL = 10.0
MAX_ERROR_BACKOFF = 30.0
# Origins whose status stream answered "not served": ``auto`` polls there from the start, so a relay
# without the stream costs no extra connection per wait (one process learns it once per origin).
_NO_STREAM: set[str] = set()
# Origins whose status stream answered with a status: ``auto`` waits there stream at once, without a probe.
_STREAM_SERVED: set[str] = set()
DEFAULT_MAX_POLL_INTERVAL = 60.0
# A queued job looks again after this part of its predicted start: a 2x wrong estimate is still caught.
LOOK_FRACTION = 0.5
# ``auto`` opens the stream for a queued job predicted to start within this many poll intervals.
STREAM_LEAD = 2.0
# Seconds over which what the waits saw of a queue's pace fades (a new batch replaces an old estimate).
DRAIN_MEMORY = 20.0
DRAIN_MEMORY_SHORT = 3.0
# Jobs per second no fal queue is assumed to beat before it is seen moving: 40 (the largest self-serve
# limit) one-second jobs at once, with room to spare.
FASTEST_DRAIN = 50.0
TRUST_AHEAD = 2.0
# The waits of one process wake on a shared grid of this step (at most a twentieth of the poll interval),
# so the polls due within one step go out together: one pass of the event loop and one wake-up of the
# server for a batch, not one for each poll (about a tenth less CPU per wait in bench_triggers at N = 1,000).
WAKE_STEP = 0.05


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


def queue_key(status_url: str) -> str:
    """The queue a status URL belongs to: its origin and endpoint (``.../fal-ai/flux-1``), without the request."""
    return status_url.split("?")[0].rsplit("/requests/", 1)[0].lower()


def check_max_poll_interval(value: float, poll_interval: float) -> float:
    """``max_poll_interval`` as a float, or an error naming the field and the values allowed."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= poll_interval:
        raise FluxReduxError(
            f"max_poll_interval: got {value!r}; allowed: a number of seconds >= poll_interval ({poll_interval})"
        )
    return float(value)


class DrainRate:
    """How fast one queue drains (jobs dispatched per second), learnt from the positions every wait sees.

    Each wait reports how far its position fell between two looks (a start counts as falling past 0). The
    rate is the fallen positions over the time watched, pooled over all waits, with old looks fading; of a
    long memory (``DRAIN_MEMORY``) and a short one (``DRAIN_MEMORY_SHORT``) the faster pace counts, so a
    queue that speeds up is followed within seconds, and one that slows down is looked at too often for a
    while rather than too late. One job per second the queue has been watched (up to ``DRAIN_MEMORY``) is
    added: waits that look together all see the same few seconds, so their pooled time overstates what is
    known. Until some position has fallen the rate is unknown; when the queue first moves, the time it
    stood still is dropped (a look that began before counts only from the last look that saw it still), or
    its first waves would look slow. Free of I/O; times are ``time.monotonic()`` values.
    """

    __slots__ = ("_at", "_fallen", "_since", "_still_until", "_watched")

    def __init__(self) -> None:
        self._fallen = [0.0, 0.0]  # per memory: DRAIN_MEMORY, DRAIN_MEMORY_SHORT
        self._watched = [0.0, 0.0]
        self._since = 0.0
        self._still_until = 0.0  # before the queue first moves: it was seen standing still until then
        self._at: float | None = None

    def observe(self, fallen: float, seconds: float, now: float) -> None:
        """A wait saw its position fall by ``fallen`` in ``seconds``; a grown position counts as no progress."""
        if seconds <= 0:
            return
        if self._at is None or now - self._at > 5 * DRAIN_MEMORY:  # nothing recent: start afresh
            self._fallen, self._watched = [0.0, 0.0], [0.0, 0.0]
            self._since, self._still_until = now - seconds, 0.0
        else:
            self._since = min(self._since, now - seconds)
        if self._fallen[0] <= 0:
            if fallen <= 0:
                self._still_until = max(self._still_until, now)
            else:  # the queue moves for the first time: the time it stood still says nothing about its pace
                self._watched = [0.0, 0.0]
        # A look that began while the queue still stood (its first wave) counts only the time since.
        seconds = max(min(seconds, now - self._still_until), 1e-3)
        elapsed = 0.0 if self._at is None else max(0.0, now - self._at)
        for index, memory in enumerate((DRAIN_MEMORY, DRAIN_MEMORY_SHORT)):
            fade = math.exp(-elapsed / memory)
            self._fallen[index] = self._fallen[index] * fade + max(0.0, fallen)
            self._watched[index] = self._watched[index] * fade + seconds
        self._at = max(now, self._at or now)

    @property
    def watched(self) -> float:
        """Seconds this queue has been watched without a pause of ``5 x DRAIN_MEMORY``; 0 before two looks."""
        return 0.0 if self._at is None else self._at - self._since

    @property
    def rate(self) -> float | None:
        """Jobs per second, on the optimistic side; None until some position has been seen to fall."""
        if self._fallen[0] <= 0:
            return None
        pace = max(fallen / watched for fallen, watched in zip(self._fallen, self._watched, strict=True))
        return pace + 1.0 / max(1e-3, min(DRAIN_MEMORY, self.watched))


# One estimate per queue for the whole process: every wait of a triggerer teaches all the others.
_DRAIN: dict[str, DrainRate] = {}


def drain_rate(key: str) -> DrainRate:
    rate = _DRAIN.get(key)
    if rate is None:
        rate = _DRAIN[key] = DrainRate()
    return rate


def fastest_start(position: int) -> float:
    """Seconds until a job at ``position`` (jobs ahead) starts, at the soonest: at ``FASTEST_DRAIN`` jobs a second."""
    return (position + 1) / FASTEST_DRAIN


def on_wake_grid(delay: float, step: float, clock: float | None = None) -> float:
    """``delay`` stretched (by less than ``step``) to end on a multiple of ``step`` of the monotonic clock
    (asyncio's loop clock): waits whose delays end within one step wake together."""
    if delay <= 0 or step <= 0:
        return max(0.0, delay)
    clock = time.monotonic() if clock is None else clock
    return math.ceil((clock + delay) / step) * step - clock


class PollSchedule:
    """When to look: first after a random part of ``interval``, then per the job's place in its queue.

    The random start spreads waiters started together (a mapped task, a restarted triggerer) evenly over one
    interval instead of polling in bursts. A running job (or one whose position is unknown) is looked at
    every ``interval``, so a job of length L costs L / interval + 1 polls and a change is seen at most one
    interval late. A queued job looks again after ``LOOK_FRACTION`` of its predicted start (see the module's
    docstring), between ``interval`` and ``max_interval``.

    :param interval: The poll interval, the shortest delay.
    :param max_interval: The longest delay, however far back the job is.
    :param drain: The queue's drain rate, shared with the other waits on that queue.
    """

    def __init__(
        self, interval: float, max_interval: float = DEFAULT_MAX_POLL_INTERVAL, drain: DrainRate | None = None
    ) -> None:
        self.interval = max(0.05, interval)
        self.max_interval = max(self.interval, max_interval)
        self.drain = drain or DrainRate()

    def first_delay(self) -> float:
        return random.uniform(0.0, self.interval)

    def predicted_start(self, position: int) -> float | None:
        """Seconds until a job at ``position`` (jobs ahead) starts; None while the queue's pace is unknown."""
        rate = self.drain.rate
        return None if rate is None else (position + 1) / rate

    def earliest_start(self, position: int) -> float:
        """Seconds until a job at ``position`` starts, by the estimate but never sooner than at ``FASTEST_DRAIN``."""
        start = self.predicted_start(position)
        return fastest_start(position) if start is None else max(start, fastest_start(position))

    def earliest_end(self, position: int) -> float:
        """Seconds until a job at ``position`` ends, at the soonest: when the job behind it starts (its own run
        lasts at least the time between two dispatches, C of them running at once, C >= 1)."""
        return self.earliest_start(position + 1)

    def next_delay(self, status: QueueStatus) -> float:
        position = status.queue_position
        if status.status is not QueueState.IN_QUEUE or position is None:
            return self.interval
        return self.queued_delay(position)

    def queued_delay(self, position: int) -> float:
        """The next look at a job waiting at ``position`` (jobs ahead); see the module's docstring."""
        if position == 0:
            return self.interval
        # No queue drains faster than FASTEST_DRAIN: looking at this part of that start is always safe, and is
        # the look while the queue has not been seen to move.
        safe = LOOK_FRACTION * fastest_start(position)
        start = self.predicted_start(position)
        # An estimate learnt over ``watched`` seconds is not trusted further ahead than that (nor than is safe).
        look = safe if start is None else min(LOOK_FRACTION * start, max(TRUST_AHEAD * self.drain.watched, safe))
        return min(self.max_interval, max(self.interval, look))


class StatusReporter:
    """Log what changed between statuses, in as few log records as a reader needs.

    A log record is the costliest thing a wait does between its HTTP calls: the triggerer renders it to
    JSON and sends it to its supervisor, which writes it again (about as much CPU as a status poll). So
    the lines of a wait are gathered, one line per state (IN_QUEUE with its position, IN_PROGRESS) and one
    per line of fal's, in the order they happened, and a record goes out only when a reader needs it now:

    - the job ends (COMPLETED): everything gathered, then the end;
    - the job waits behind others (IN_QUEUE at a position above 0, where it may sit for minutes), and
      later its position, at most every ``POSITION_LOG_INTERVAL`` seconds;
    - ``FAL_LOG_INTERVAL`` seconds have passed since the last record and lines are gathered (a long run).

    A job that starts at once and runs a few seconds, as most Redux jobs do, writes one record. ``flush()``
    writes what is still gathered (the waiter stops without an end: the window ended, an error).
    """

    def __init__(self, log: Any, request_id: str, *, forward_logs: bool = True) -> None:
        self.log = log
        self.request_id = request_id
        self.forward_logs = forward_logs
        self._state: QueueState | None = None
        self._position: int | None = None
        self._position_logged = 0.0
        self._seen_logs = 0
        self._gathered: list[str] = []
        self._written = time.monotonic()

    def __call__(self, status: QueueStatus) -> None:
        now = time.monotonic()
        state, position = status.status, status.queue_position
        queued = state is QueueState.IN_QUEUE
        changed = state is not self._state
        self._state = state
        if changed and queued:
            self._position, self._position_logged = position, now
            self._gathered.append(f"fal request {self.request_id} is IN_QUEUE, queue position {position}")
        elif changed and state is QueueState.IN_PROGRESS:  # fal's lines of a running job come after its start
            self._gathered.append(f"fal request {self.request_id} is IN_PROGRESS")
        if self.forward_logs and status.logs and len(status.logs) > self._seen_logs:
            self._gathered.extend(f"fal: {entry.message}" for entry in status.logs[self._seen_logs :])
            self._seen_logs = len(status.logs)
        if changed and not queued and state is not QueueState.IN_PROGRESS:
            self._write(now, f"fal request {self.request_id} is {state.value}")
        elif changed and queued and position:
            self._write(now)
        elif queued and position != self._position and now >= self._position_logged + POSITION_LOG_INTERVAL:
            # In a long queue the position changes at every poll: one line per interval, not one per poll.
            self._position, self._position_logged = position, now
            self._write(now, f"fal request {self.request_id}: queue position {position}")
        elif self._gathered and now >= self._written + FAL_LOG_INTERVAL:
            self._write(now)

    def flush(self) -> None:
        """Write the lines gathered since the last record, if any."""
        if self._gathered:
            self._write(time.monotonic())

    def _write(self, now: float, last: str | None = None) -> None:
        lines = [*self._gathered, *([last] if last else [])]
        self._gathered = []
        self._written = now
        self.log.info("%s", "\n".join(lines))


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
    :param max_poll_interval: The longest time between two looks at a queued job (see the module docstring).
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
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL
    errors: int = field(default=0, init=False)
    origin: str = field(default="", init=False)
    use_stream: bool = field(default=False, init=False)
    schedule: PollSchedule = field(init=False)
    last: QueueStatus | None = field(default=None, init=False)
    left_window: str | None = field(default=None, init=False)
    _looked: tuple[float, int] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.mode not in WAIT_MODES:
            raise FluxReduxError(f"wait_mode: got {self.mode!r}; allowed: {', '.join(WAIT_MODES)}")
        check_max_poll_interval(self.max_poll_interval, self.poll_interval)
        self.origin = stream_origin(self.status_url)
        self.refresh()
        self.schedule = PollSchedule(self.poll_interval, self.max_poll_interval, drain_rate(queue_key(self.status_url)))

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

    def saw_before(self, position: int | None, at: float) -> None:
        """A look taken before this wait began said ``position``, at ``at`` (epoch seconds, so it may come from
        another process): the submit's answer, or, for the trigger, the deferring worker's last look.

        It counts as the wait's first look. A process starts knowing no drain rate; with it, the first status
        already shows how fast the queue moves (a deep-queued job leaves the window after one poll, not two),
        and the first status is timed by the position (``first_delay``), not taken at once. A job that cannot
        end within the window even at the fastest pace closes it now, without a poll.
        """
        if position is not None and self._looked is None:
            # To this process's monotonic clock; a look from the future (clocks apart) counts as taken now.
            self._looked = (time.monotonic() - max(0.0, time.time() - at), position)
            self._close_window_if_too_far(position)

    @property
    def last_look(self) -> tuple[int, float] | None:
        """The last look at the job while it was queued: (position, epoch seconds), for ``saw_before`` of the
        next wait; None once it ran."""
        if self._looked is None:
            return None
        at, position = self._looked
        return position, time.time() - (time.monotonic() - at)

    def seen(self, status: QueueStatus, now: float | None = None) -> bool:
        """Record a status; True when the job completed (then the waiter returns it).

        A queued status teaches the queue's drain rate; one that says the job cannot start before the
        in-worker window ends closes the window now (``left_window`` says why; ``window_over()`` turns True).
        """
        self.errors = 0
        self.last = status
        self._learn(status, time.monotonic() if now is None else now)
        if self.on_status is not None:
            self.on_status(status)
        return status.status is QueueState.COMPLETED

    def _learn(self, status: QueueStatus, now: float) -> None:
        queued = status.status is QueueState.IN_QUEUE
        position = status.queue_position if queued else None
        if self._looked is not None and (position is not None or not queued):
            at, before = self._looked
            # A start is a fall past position 0: the job itself was dispatched.
            fallen = before + 1 if position is None else before - position
            self.schedule.drain.observe(fallen, now - at, now)
        self._looked = None if position is None else (now, position)
        if position is not None:
            self._close_window_if_too_far(position)

    @property
    def window_end(self) -> float | None:
        """The in-worker window's end (epoch), None when there is none or the deadline comes first."""
        if self.until is None or (self.deadline is not None and self.deadline <= self.until):
            return None
        return self.until

    @property
    def window_open(self) -> bool:
        """An in-worker window the queue has not closed (its end may be past: ``window_over``)."""
        return self.window_end is not None and self.left_window is None

    def _close_window_if_too_far(self, position: int) -> None:
        if self.until is None or not self.window_open or position == 0:
            return
        end = self.schedule.earliest_end(position)
        now = time.time()
        if now + end > self.until:
            self.left_window = f"queue position {position}, predicted to end in ~{end:.0f} s at the soonest"
            self.until = min(self.until, now)

    def next_delay(self, status: QueueStatus) -> float:
        return self._in_window(self.schedule.next_delay(status))

    def _in_window(self, delay: float) -> float:
        """While the in-worker window is open, a look every ``poll_interval`` at most: the looks there decide
        whether the job leaves the worker, and a fresh worker learns the queue's pace only from them (a job at
        position 280 would otherwise first look after 2.8 s, half its start at the fastest pace)."""
        return min(delay, self.poll_interval) if self.window_open else delay

    def first_delay(self) -> float:
        """Before the first look: a random part of ``poll_interval``, or, after a look taken before the wait
        (``saw_before``) at a position, the next look that one planned; none before a ``stream``-mode stream.

        A batch of 10,000 deferred jobs then does not poll 10,000 times in its first second in the triggerer.
        """
        if self.mode == "stream":
            return 0.0
        spread = self.schedule.first_delay()
        if self._looked is None:
            return spread
        at, position = self._looked
        return self._in_window(max(spread, self.schedule.queued_delay(position) - (time.monotonic() - at)))

    def stream_now(self) -> bool:
        """Whether the next look should be the status stream rather than a poll.

        ``stream`` mode always streams. ``auto`` streams where the stream is served (or not yet known to be
        unserved) and only for a job that runs, is next in line or is predicted to start within
        ``STREAM_LEAD`` poll intervals: a deep-queued job polls rarely instead of holding a connection.
        """
        if self.mode == "stream":
            return True
        if not self.use_stream or self.last is None:
            return False
        if self.last.status is not QueueState.IN_QUEUE:
            return True
        position = self.last.queue_position
        if position is None or position == 0:
            return True
        start = self.schedule.predicted_start(position)
        return start is not None and start <= STREAM_LEAD * self.schedule.interval

    def failed(self, error: FluxReduxError) -> float:
        """A failed call: the delay before trying again, or re-raise once too many failed in a row."""
        if isinstance(error, StreamUnsupportedError) and self.mode == "auto":
            if not error.busy:
                _NO_STREAM.add(self.origin)
            self.use_stream = False
            return 0.0  # poll now: the look this wait was due for, at its own pace
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
        end = self.window_end
        return end is not None and now >= end

    def sleep_for(self, delay: float, now: float | None = None) -> float:
        """``delay`` stretched to the next step of the shared wake grid, or cut short to wake when the waiter
        must stop (``now``: epoch seconds)."""
        on_grid = on_wake_grid(delay, min(WAKE_STEP, self.poll_interval / 20))
        stop = self.stop_at
        if stop is None:
            return on_grid
        return max(0.0, min(on_grid, stop - (time.time() if now is None else now)))

    def stopped(self) -> None:
        """The waiter stopped (completed, window over, error, cancelled): what ``on_status`` gathered goes out
        (``StatusReporter.flush``)."""
        flush = getattr(self.on_status, "flush", None)
        if flush is not None:
            flush()

    def after_cancel(self, outcome: str) -> bool:
        """The deadline passed and cancel answered ``outcome``: True when the job may have completed."""
        return outcome == "ALREADY_COMPLETED"

    def timeout_error(self, outcome: str) -> FluxReduxTimeoutError:
        return FluxReduxTimeoutError(
            f"The job did not complete before the deadline; the remote job was asked to cancel ({outcome}).",
            request_id=self.request_id,
        )
