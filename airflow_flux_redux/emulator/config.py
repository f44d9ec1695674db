"""What an emulator is told at start; the timing part can also be changed live through the admin API."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

AuthScheme = Literal["Key", "Bearer", "any"]
_COMPACT_TIMING = re.compile(r"(\d+)-(\d+):([0-9.]+):([0-9.]+)(?::([0-9.]+))?")
_TIMING_FIELDS = ("seeds", "queue_seconds", "run_seconds", "run_step")


class TimingRule(NamedTuple):
    """Jobs with a request seed in lo..hi queue ``queue_seconds``, run ``run_seconds + (seed - lo) * run_step``."""

    lo: int
    hi: int
    queue_seconds: float
    run_seconds: float
    run_step: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "seeds": [self.lo, self.hi],
            "queue_seconds": self.queue_seconds,
            "run_seconds": self.run_seconds,
            "run_step": self.run_step,
        }

    def compact(self) -> str:
        """The ``--timing`` flag value of this rule."""
        step = f":{self.run_step}" if self.run_step else ""
        return f"{self.lo}-{self.hi}:{self.queue_seconds}:{self.run_seconds}{step}"


def parse_timing(spec: dict[str, Any] | str) -> TimingRule:
    """One per-seed timing rule, from a dict or the compact ``LO-HI:QUEUE:RUN[:STEP]``; ValueError if bad."""
    if isinstance(spec, str):
        match = _COMPACT_TIMING.fullmatch(spec.strip())
        if match is None:
            raise ValueError(f"timing {spec!r} must look like LO-HI:QUEUE:RUN[:STEP], e.g. 24-47:0.2:10:0.2")
        lo, hi, queue, run, step = match.groups()
        spec = {"seeds": [lo, hi], "queue_seconds": queue, "run_seconds": run, "run_step": step or 0}
    if not isinstance(spec, dict) or set(spec) - set(_TIMING_FIELDS):
        raise ValueError(f"a timing rule is an object with the fields {list(_TIMING_FIELDS)}, not {spec!r}")
    try:
        lo, hi = (int(bound) for bound in spec["seeds"])
        rule = TimingRule(
            lo, hi, float(spec["queue_seconds"]), float(spec["run_seconds"]), float(spec.get("run_step") or 0)
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"timing rule {spec!r}: needs seeds [lo, hi] (integers), queue_seconds and run_seconds (numbers), "
            f"optional run_step ({type(err).__name__}: {err})"
        ) from None
    if lo > hi or min(rule.queue_seconds, rule.run_seconds, rule.run_step) < 0:
        raise ValueError(f"timing rule {spec!r}: seeds must be [lo, hi] with lo <= hi, and times not negative")
    return rule


@dataclass
class EmulatorConfig:
    """Settings of one emulator instance.

    ``key=None`` accepts any credential, but a request must still carry ``Authorization: Key <k>`` or
    ``Bearer <k>`` (per ``auth_scheme``): tests can then see that a client really sends one.
    ``concurrency_limit=None`` runs every job at once; ``concurrency_limit=C`` is fal's account concurrency
    limit: each key (account) has at most C jobs IN_PROGRESS across all its endpoints, and its other jobs
    wait IN_QUEUE, dispatched FIFO as its slots free up, with ``queue_position`` = the number of that key's
    jobs ahead. A cancelled job leaves the queue (or frees its slot) and the jobs behind it move up.
    ``workers`` is the old name of the same setting and still works.

    ``relay=True`` plays a "fal-compatible relay" that passes fal's answers through: submit and status
    return URLs on ``https://queue.fal.run``, the emulator serves the same paths itself with Bearer auth
    (``auth_scheme="any"`` becomes ``"Bearer"``), and there is no status stream. ``path_prefix`` (e.g.
    ``/api/v1``) serves every route under that path, like a gateway's base URL; the URLs the emulator
    returns include it (``public_url``, when set, replaces scheme, host and prefix at once).

    ``timings`` gives jobs of some seeds their own lengths: the first rule whose inclusive seed range holds
    the request's ``seed`` sets queue time ``queue_seconds`` and run time ``run_seconds + (seed - lo) *
    run_step``; other jobs (and jobs without a seed) use ``queue_seconds`` / ``run_seconds``. The
    ``X-Emulator-Queue-Seconds`` / ``X-Emulator-Run-Seconds`` request headers win over both.
    """

    key: str | None = None
    auth_scheme: AuthScheme = "any"
    queue_seconds: float = 0.5
    run_seconds: float = 1.5
    log_lines: int = 4
    faults: list[dict[str, Any] | str] = field(default_factory=list)
    seed: int | None = None
    result_ttl: float = 3600.0
    short_result_ttl: float = 360.0
    public_url: str | None = None
    keepalive_seconds: float = 15.0
    concurrency_limit: int | None = None
    workers: int | None = None  # the old name of concurrency_limit
    fetch_timeout: float = 10.0
    max_input_bytes: int = 32 * 1024 * 1024
    max_side: int = 4096
    relay: bool = False
    path_prefix: str = ""
    timings: list[dict[str, Any] | str] = field(default_factory=list)
    timing_rules: list[TimingRule] = field(default_factory=list, init=False, repr=False, compare=False)

    # The fields the admin API (and ``EmulatorServer.configure``) can change while the emulator runs.
    LIVE_NUMBERS: ClassVar[tuple[str, ...]] = (
        "queue_seconds",
        "run_seconds",
        "result_ttl",
        "short_result_ttl",
        "keepalive_seconds",
        "log_lines",
    )
    LIVE_FIELDS: ClassVar[tuple[str, ...]] = (*LIVE_NUMBERS, "timings")

    def __post_init__(self) -> None:
        if self.auth_scheme not in ("Key", "Bearer", "any"):
            raise ValueError(f"auth_scheme must be Key, Bearer or any, not {self.auth_scheme!r}")
        if self.workers is not None and self.concurrency_limit not in (None, self.workers):
            raise ValueError(
                f"concurrency_limit={self.concurrency_limit} and workers={self.workers} disagree; workers is the "
                "old name of concurrency_limit: set only concurrency_limit"
            )
        if self.concurrency_limit is None:
            self.concurrency_limit = self.workers
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ValueError("concurrency_limit must be at least 1 (or None for unlimited)")
        self.workers = self.concurrency_limit
        if self.relay and self.auth_scheme == "any":
            self.auth_scheme = "Bearer"  # relays take the key as a Bearer token
        prefix = self.path_prefix.strip().rstrip("/")
        if prefix and (not prefix.startswith("/") or "//" in prefix or "?" in prefix or "#" in prefix):
            raise ValueError(f"path_prefix must look like /api/v1 (or be empty), not {self.path_prefix!r}")
        self.path_prefix = prefix
        self.apply_live({name: getattr(self, name) for name in self.LIVE_FIELDS})

    def apply_live(self, changes: dict[str, Any]) -> None:
        """Change timings of a running emulator; raises ValueError naming a bad or unknown field."""
        unknown = set(changes) - set(self.LIVE_FIELDS)
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; allowed: {list(self.LIVE_FIELDS)}")
        for name, value in changes.items():
            if name == "timings":
                if not isinstance(value, list):
                    raise ValueError(f"timings must be a list of rules, not {value!r}")
                self.timing_rules = [parse_timing(rule) for rule in value]
                self.timings = [rule.as_dict() for rule in self.timing_rules]
                continue
            number = int(value) if name == "log_lines" else float(value)
            if number < 0 or (name == "log_lines" and number < 1) or (name == "keepalive_seconds" and not number):
                raise ValueError(f"{name} must be positive, got {value!r}")
            setattr(self, name, number)

    def timing_for(self, seed: int | None) -> tuple[float, float]:
        """(queue seconds, run seconds) of a job with this request seed."""
        if seed is not None:
            for rule in self.timing_rules:
                if rule.lo <= seed <= rule.hi:
                    return rule.queue_seconds, rule.run_seconds + (seed - rule.lo) * rule.run_step
        return self.queue_seconds, self.run_seconds

    def live(self) -> dict[str, Any]:
        """The fields the admin API can change, with their current values."""
        data = asdict(self)
        return {name: data[name] for name in self.LIVE_FIELDS}
