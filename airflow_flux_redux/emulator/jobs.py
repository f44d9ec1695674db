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
    ) -> None:  # fmt: skip
        self.id = job_id
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


class JobTable:
    """All jobs, plus the sorted start times that make queue positions O(log n)."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._starts: list[float] = []
        self._free_at: list[float] = []  # when each of the K workers is next free (a heap)

    def schedule(self, now: float, queue_seconds: float, run_seconds: float, workers: int | None) -> float:
        """Start time of a new job: after its queue time, and after a worker frees up when K is set."""
        start = now + queue_seconds
        if workers is not None:
            if len(self._free_at) < workers:
                heapq.heappush(self._free_at, start + run_seconds)
            else:
                start = max(start, self._free_at[0])
                heapq.heapreplace(self._free_at, start + run_seconds)
        return start

    def add(self, job: Job) -> None:
        self.jobs[job.id] = job
        insort(self._starts, job.start_at)

    def move_start(self, old: float, new: float) -> None:
        del self._starts[bisect_left(self._starts, old)]
        insort(self._starts, new)

    def queue_position(self, job: Job, now: float) -> int:
        return max(0, bisect_left(self._starts, job.start_at) - bisect_right(self._starts, now))

    def queue_length(self, now: float) -> int:
        return len(self._starts) - bisect_right(self._starts, now)

    def next_start(self, now: float) -> float | None:
        index = bisect_right(self._starts, now)
        return self._starts[index] if index < len(self._starts) else None
