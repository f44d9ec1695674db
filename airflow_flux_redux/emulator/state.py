"""What one emulator remembers: its config, fault rules, jobs and counters, and the stats built from them."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx

from airflow_flux_redux.emulator.faults import ROUTES, FaultBook
from airflow_flux_redux.emulator.jobs import JobTable

if TYPE_CHECKING:
    from airflow_flux_redux.emulator.call import Call
    from airflow_flux_redux.emulator.config import EmulatorConfig
    from airflow_flux_redux.emulator.jobs import Job

# A relay passes fal's answers through, so the URLs it hands out are on fal's queue host.
FAL_QUEUE_URL = "https://queue.fal.run"


class EmulatorState:
    """All state lives in memory; ``clear()`` (``POST /_emulator/reset``) forgets jobs and counters."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.faults = FaultBook(config.seed)
        self.faults.replace(config.faults)
        self._client: httpx.AsyncClient | None = None
        self.clear()

    def clear(self) -> None:
        self.table = JobTable()
        self.submitted_ids: list[str] = []
        self.by_route: Counter[str] = Counter()
        self.auth_failures: Counter[str] = Counter()
        self.images_submitted: Counter[str] = Counter()
        self.streams_open = self.streams_open_peak = 0
        self.rng = random.Random(self.config.seed)

    def http(self) -> httpx.AsyncClient:
        """The client that fetches input images given as http(s) URLs."""
        if self._client is None:
            limits = httpx.Limits(max_connections=32)
            self._client = httpx.AsyncClient(timeout=self.config.fetch_timeout, follow_redirects=True, limits=limits)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def find(self, prefix: str, job_id: str) -> Job | None:
        job = self.table.jobs.get(job_id)
        # Status and result live under owner/app only; a client that rebuilt the URL from the full model
        # path (fal-ai/flux-1/schnell/redux/requests/...) gets the 404 that fal would give it.
        return job if job is not None and job.prefix == prefix else None

    def expired(self, job: Job, now: float) -> bool:
        ttl = self.config.result_ttl if job.lifetime is None else job.lifetime
        if job.short_lived:
            ttl = min(ttl, self.config.short_result_ttl)
        if not job.expired and now > job.finish_at + ttl:
            job.expired, job.images = True, None
        return job.expired

    def base_url(self, call: Call) -> str:
        """The base of the URLs this emulator serves (files, and queue URLs unless it plays a relay)."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        host = call.header(b"host")
        if not host:
            server_host, port = call.scope.get("server") or ("127.0.0.1", 80)
            host = f"{server_host}:{port}"
        return f"{call.scope.get('scheme', 'http')}://{host}{self.config.path_prefix}"

    def queue_url(self, call: Call) -> str:
        """The base of the status, result and cancel URLs handed out: fal's own host when playing a relay."""
        return FAL_QUEUE_URL if self.config.relay else self.base_url(call)

    def stats(self, summary: bool = False) -> dict[str, Any]:
        """Counters for tests and benchmarks; ``summary`` leaves out the per-request table."""
        now = time.monotonic()
        data: dict[str, Any] = {
            "submissions": len(self.submitted_ids),
            "auth_failures": sum(self.auth_failures.values()),
            "auth_failures_by_route": dict(self.auth_failures),
            "requests_by_route": {route: self.by_route[route] for route in ROUTES},
            "faults_fired": dict(self.faults.fired),
            "queue_length": self.table.queue_length(now),
            "streams_open": self.streams_open,
            "streams_open_peak": self.streams_open_peak,
            "submissions_by_image_url": dict(self.images_submitted),
        }
        if not summary:
            data["submitted_ids"] = list(self.submitted_ids)
            data["requests"] = {job_id: job.stats(now) for job_id, job in self.table.jobs.items()}
        return data
