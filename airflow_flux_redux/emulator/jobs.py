"""Jobs whose state is computed from timestamps, so ten thousand idle jobs cost no task and no timer.

A job is IN_QUEUE until ``start_at``, IN_PROGRESS until ``finish_at`` (a log line every
``run / log_lines`` seconds), then COMPLETED. A failed job is COMPLETED with ``failure`` set.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from bisect import bisect_left, bisect_right, insort
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_flux_redux.models import QueueState

if TYPE_CHECKING:
    import asyncio

    from airflow_flux_redux.emulator.images import GeneratedImage
    from airflow_flux_redux.models import FluxReduxRequest

Headers = list[tuple[bytes, bytes]]


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Failure:
    """How a job failed: what its status says (``error``, ``error_type``) and what its result answers."""

    error: str
    error_type: str
    code: int
    body: bytes
    headers: Headers = field(default_factory=list)


def model_error(code: int, error_type: str, message: str) -> Failure:
    """A model error as fal returns it: ``{"detail": [{loc, msg, type}]}`` with the model's status code."""
    body = dumps({"detail": [{"loc": ["body", "image_url"], "msg": message, "type": error_type}]})
    return Failure(message, error_type, code, body)


def request_error(code: int, error_type: str, message: str, headers: Headers | None = None) -> Failure:
    """A request error as fal returns it: flat ``{"detail", "error_type"}`` plus ``X-Fal-Error-Type``."""
    body = dumps({"detail": message, "error_type": error_type})
    return Failure(message, error_type, code, body, [(b"x-fal-error-type", error_type.encode()), *(headers or [])])


NOT_FOUND = dumps({"detail": "Request not found"})
CANCELLED = request_error(499, "client_cancelled", "Request cancelled")
START_TIMEOUT = request_error(
    504, "request_timeout", "The request did not start within X-Fal-Request-Timeout",
    [(b"x-fal-request-timeout-type", b"user"), (b"x-fal-retryable", b"false")],
)  # fmt: skip


class Job:
    """One submitted request; all times are ``time.monotonic()`` values."""

    __slots__ = (
        "_completed_body",
        "_head",
        "_log_entries",
        "account",
        "auth_failures",
        "cancels",
        "expired",
        "failure",
        "fal_options",
        "finish_at",
        "generation",
        "id",
        "image_hash",
        "images",
        "lifetime",
        "log_lines",
        "planned_run",
        "prefix",
        "ready_at",
        "reported_error",
        "request",
        "response_url",
        "result_fetches",
        "seed",
        "short_lived",
        "start_at",
        "status_polls",
        "stream_opens",
        "submitted",
        "wakeup",
        "wall_offset",
    )

    def __init__(
        self, job_id: str, prefix: str, request: FluxReduxRequest, seed: int, base_url: str,
        submitted: float, start_at: float, finish_at: float, log_lines: int, wall_offset: float,
        account: str = "", ready_at: float | None = None,
    ) -> None:  # fmt: skip
        self.id = job_id
        self.account = account  # the key: fal's concurrency limit and queue are per account
        self.ready_at = submitted if ready_at is None else ready_at  # end of its own queue time
        self.prefix = prefix
        self.request = request
        self.image_hash = hashlib.sha256(request.image_url.encode()).hexdigest()[:16]
        self.seed = seed
        self.submitted = submitted
        self.start_at = start_at
        self.finish_at = finish_at
        self.planned_run = finish_at - start_at
        self.log_lines = log_lines
        self.wall_offset = wall_offset  # wall clock = monotonic + wall_offset, for log timestamps
        self.failure: Failure | None = None
        self.reported_error: Failure | None = None  # an error the status reports although the result is fine
        self.images: list[GeneratedImage] | None = None
        self.generation: asyncio.Future[None] | None = None
        self.wakeup: asyncio.Event | None = None  # set by a cancel, so open streams notice at once
        self.expired = False
        self.lifetime: float | None = None  # seconds the result lives, when the submit asked for its own
        self.short_lived = False  # X-Fal-Store-IO: 0 with sync_mode: kept only config.short_result_ttl
        self.fal_options: dict[str, dict[str, str]] = {}
        self.cancels = self.status_polls = self.stream_opens = self.result_fetches = self.auth_failures = 0
        self.response_url = f"{base_url}/{prefix}/requests/{job_id}"
        self._head = dumps({"request_id": job_id, "response_url": self.response_url})[1:-1]
        self._log_entries: list[bytes] | None = None
        self._completed_body: dict[bool, bytes] = {}

    def state(self, now: float) -> QueueState:
        if now < self.start_at:
            return QueueState.IN_QUEUE
        return QueueState.IN_PROGRESS if now < self.finish_at else QueueState.COMPLETED

    def _log_time(self, index: int) -> float:
        return self.start_at + self.planned_run * index / self.log_lines

    def _logs_at(self, now: float) -> bytes:
        if self._log_entries is None:
            steps = self.log_lines - 1
            messages = ["Loading model (emulator: deterministic image variation, not FLUX)"]
            messages += [f"step {i}/{steps}" for i in range(1, steps + 1)]
            self._log_entries = [
                dumps({
                    "message": message,
                    "level": "INFO",
                    "source": "user",
                    "timestamp": datetime.fromtimestamp(self._log_time(i) + self.wall_offset, UTC).isoformat(),
                })
                for i, message in enumerate(messages)
            ]  # fmt: skip
        shown = sum(1 for i in range(self.log_lines) if self._log_time(i) <= now and self._log_time(i) < self.finish_at)
        return b"[" + b",".join(self._log_entries[:shown]) + b"]"

    def status_body(self, now: float, logs: bool, queue_position: int) -> tuple[int, bytes]:
        """(HTTP code, JSON bytes) of the status answer; the caller resolves the outcome of a finished job."""
        state = self.state(now)
        if state is QueueState.IN_QUEUE:
            return 202, b'{"status":"IN_QUEUE",%s,"queue_position":%d}' % (self._head, queue_position)
        if state is QueueState.IN_PROGRESS:
            return 202, b'{"status":"IN_PROGRESS",%s,"logs":%s}' % (self._head, self._logs_at(now) if logs else b"null")
        body = self._completed_body.get(logs)
        if body is None:
            ran = self.finish_at - self.start_at
            metrics = b'{"inference_time":%s}' % repr(round(ran, 3)).encode() if ran > 0 else b"{}"
            error, failure = b"", self.failure or self.reported_error
            if failure is not None:
                error = b',"error":%s,"error_type":%s' % (dumps(failure.error), dumps(failure.error_type))
            shown = self._logs_at(now) if logs else b"null"
            body = b'{"status":"COMPLETED",%s,"logs":%s,"metrics":%s%s}' % (self._head, shown, metrics, error)
            self._completed_body[logs] = body
        return 200, body

    def next_change(self, now: float, logs: bool, next_queue_start: float | None) -> float:
        """When the status answer changes next (used by the stream to sleep instead of polling)."""
        if now < self.start_at:
            return min(self.start_at, next_queue_start or self.start_at)
        if logs:
            upcoming = [t for t in map(self._log_time, range(self.log_lines)) if now < t < self.finish_at]
            if upcoming:
                return upcoming[0]
        return self.finish_at

    def end_now(self, now: float, failure: Failure) -> None:
        """Finish the job early (cancel): logs stop where they were and open streams wake up."""
        self.failure = failure
        if now < self.start_at:
            self.start_at = now
        self.finish_at = now
        self._completed_body.clear()
        if self.wakeup is not None:
            self.wakeup.set()

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state(now).value,
            # time.monotonic() of the emulator's host (system-wide on Linux): benchmarks compare their own clock
            "started_at": self.start_at,
            "finished_at": self.finish_at,
            "cancelled": self.failure is CANCELLED,
            "cancels": self.cancels,
            "status_polls": self.status_polls,
            "stream_opens": self.stream_opens,
            "result_fetches": self.result_fetches,
            "authorized": self.auth_failures == 0,
            "image_url_sha256": self.image_hash,
            "error_type": self.failure.error_type if self.failure else None,
            "fal_headers": self.fal_options.get("headers", {}),
            "query": self.fal_options.get("query", {}),
        }


class Account:
    """One key's queue, as fal runs it: at most ``limit`` jobs IN_PROGRESS, the rest dispatched FIFO.

    fal's concurrency limit is per account and spans all its endpoints, so jobs of one key queue behind each
    other whatever model they call, and never behind another key's jobs.
    """

    def __init__(self) -> None:
        self.jobs: list[Job] = []  # in submission (FIFO) order
        self.starts: list[float] = []  # sorted start times: queue positions in O(log n)
        self.free_at: list[float] = []  # heap: when each busy slot frees

    def schedule(self, ready_at: float, run_seconds: float, limit: int | None) -> float:
        """Start time of a new job ready at ``ready_at``: the first free slot after it, when a limit is set."""
        if limit is None:
            return ready_at
        if len(self.free_at) < limit:
            heapq.heappush(self.free_at, ready_at + run_seconds)
            return ready_at
        start = max(ready_at, self.free_at[0])
        heapq.heapreplace(self.free_at, start + run_seconds)
        return start

    def move(self, job: Job, start: float) -> None:
        del self.starts[bisect_left(self.starts, job.start_at)]
        insort(self.starts, start)
        job.finish_at = start + (job.finish_at - job.start_at)
        job.start_at = start


class JobTable:
    """All jobs, grouped by account (key): FIFO queues whose positions are O(log n)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.accounts: dict[str, Account] = {}

    def account(self, name: str) -> Account:
        account = self.accounts.get(name)
        if account is None:
            account = self.accounts[name] = Account()
        return account

    def schedule(self, account: str, ready_at: float, run_seconds: float, limit: int | None) -> float:
        """Start time of a new job of ``account``: after its queue time, and after a slot frees when limited."""
        return self.account(account).schedule(ready_at, run_seconds, limit)

    def add(self, job: Job) -> None:
        self.jobs[job.id] = job
        account = self.account(job.account)
        account.jobs.append(job)
        insort(account.starts, job.start_at)

    def ended_early(self, job: Job, now: float, queued_from: float, limit: int | None) -> None:
        """``job`` was cancelled at ``now``: it leaves the queue or frees its slot, and the jobs behind move up.

        The later jobs of its account are dispatched again, FIFO, onto the slots as they are now (jobs
        already running keep theirs); open status streams of the jobs that moved wake up.
        """
        account = self.account(job.account)
        del account.starts[bisect_left(account.starts, queued_from)]
        insort(account.starts, job.start_at)
        if limit is None:
            return
        busy = [j.finish_at for j in account.jobs if j.start_at <= now < j.finish_at]
        free = busy + [now] * max(0, limit - len(busy))
        heapq.heapify(free)
        for waiting in account.jobs:
            if waiting.start_at <= now or waiting.failure is START_TIMEOUT:
                continue  # started or done, or bound to time out before it starts (its times are fixed)
            start = max(waiting.ready_at, free[0])
            heapq.heapreplace(free, start + waiting.planned_run)
            if start != waiting.start_at:
                account.move(waiting, start)
                if waiting.wakeup is not None:
                    waiting.wakeup.set()
        account.free_at = free

    def queue_position(self, job: Job, now: float) -> int:
        """The number of jobs of the same key ahead of ``job``."""
        starts = self.account(job.account).starts
        return max(0, bisect_left(starts, job.start_at) - bisect_right(starts, now))

    def queue_length(self, now: float, account: str | None = None) -> int:
        """Jobs waiting IN_QUEUE: of one key, or of all keys."""
        accounts = self.accounts.values() if account is None else [self.account(account)]
        return sum(len(a.starts) - bisect_right(a.starts, now) for a in accounts)

    def next_start(self, job: Job, now: float) -> float | None:
        """When the next job of ``job``'s key starts (its queue position changes then)."""
        starts = self.account(job.account).starts
        index = bisect_right(starts, now)
        return starts[index] if index < len(starts) else None
