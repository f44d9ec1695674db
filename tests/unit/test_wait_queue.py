"""The queue-aware wait, without a server: many waits on a simulated fal queue, in virtual time.

The simulated queue is fal's (DESIGN.md section 8): C jobs IN_PROGRESS at once, the others IN_QUEUE with
``queue_position`` = the jobs ahead, dispatched FIFO as slots free. Each wait is a ``WaitPolicy`` driven the
way ``FluxReduxAsyncHook._follow`` drives it (look, ``seen``, sleep ``next_delay``), all in one process, so
they share the queue's drain estimate as a triggerer's waits do.
"""

from __future__ import annotations

import heapq
import random
import statistics
import time
import uuid
from bisect import bisect_right
from dataclasses import dataclass, field

import pytest

from airflow_flux_redux.exceptions import FluxReduxError
from airflow_flux_redux.models import QueueState, QueueStatus
from airflow_flux_redux.wait import (
    DEFAULT_MAX_POLL_INTERVAL,
    FASTEST_DRAIN,
    TRUST_AHEAD,
    DrainRate,
    WaitPolicy,
    queue_key,
)

RUN = 1.5


@dataclass
class Outcome:
    calls: list[int]
    late: list[float]  # the look that saw COMPLETED minus the completion
    delays: list[float] = field(default_factory=list)

    @property
    def calls_per_job(self) -> float:
        return statistics.mean(self.calls)

    def late_quantile(self, q: float) -> float:
        ordered = sorted(self.late)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fifo_starts(
    n: int, limit: int, cancelled: dict[int, float], stall: tuple[float, float] | None, ready: float = 0.0
) -> list[float]:
    """Start times of n jobs ready at ``ready`` in a queue of ``limit`` slots; a cancelled job leaves at its time."""
    free = [ready] * limit
    starts = [0.0] * n
    for i in range(n):
        if i in cancelled:
            starts[i] = cancelled[i]  # it leaves the queue then, and takes no slot
            continue
        start = free[0]
        if stall is not None and stall[0] <= start < stall[1]:
            start = stall[1]
        starts[i] = start
        heapq.heapreplace(free, start + RUN)
    for i, at in cancelled.items():
        assert all(starts[j] > at for j in range(i, n) if j not in cancelled), "cancel only queued jobs"
    return starts


def simulate(
    n: int,
    limit: int,
    *,
    interval: float = 1.0,
    max_interval: float = DEFAULT_MAX_POLL_INTERVAL,
    cancelled: dict[int, float] | None = None,
    stall: tuple[float, float] | None = None,
    ready: float = 0.0,
) -> Outcome:
    random.seed(n * 1000 + limit)
    cancelled = cancelled or {}
    starts = fifo_starts(n, limit, cancelled, stall, ready)
    kept = [i for i in range(n) if i not in cancelled]
    kept_starts = [starts[i] for i in kept]  # FIFO: non-decreasing
    rank = {i: k for k, i in enumerate(kept)}
    base = f"https://sim-{uuid.uuid4().hex[:8]}.example/fal-ai/flux-1"  # a queue of its own, fresh estimate
    waits = [
        WaitPolicy(
            request_id=str(i),
            status_url=f"{base}/requests/{i}/status",
            poll_interval=interval,
            max_poll_interval=max_interval,
            mode="poll",
        )
        for i in range(n)
    ]

    def status(i: int, t: float) -> tuple[QueueStatus, float]:
        if i in cancelled:
            return QueueStatus(status=QueueState.COMPLETED), cancelled[i]
        end = starts[i] + RUN
        if t >= end:
            return QueueStatus(status=QueueState.COMPLETED), end
        if t >= starts[i]:
            return QueueStatus(status=QueueState.IN_PROGRESS), end
        k = rank[i]
        ahead = k - min(k, bisect_right(kept_starts, t))
        ahead += sum(1 for j, at in cancelled.items() if j < i and at > t)
        return QueueStatus(status=QueueState.IN_QUEUE, queue_position=ahead), end

    looks = [(wait.first_delay(), i) for i, wait in enumerate(waits) if i not in cancelled]
    heapq.heapify(looks)
    outcome = Outcome(calls=[0] * n, late=[0.0] * n)
    while looks:
        t, i = heapq.heappop(looks)
        outcome.calls[i] += 1
        seen, end = status(i, t)
        if waits[i].seen(seen, now=t):
            outcome.late[i] = t - end
            continue
        delay = waits[i].next_delay(seen)
        outcome.delays.append(delay)
        heapq.heappush(looks, (t + delay, i))
    outcome.calls = [outcome.calls[i] for i in kept]
    outcome.late = [outcome.late[i] for i in kept]
    return outcome


@pytest.mark.parametrize(("n", "limit"), [(1000, 2), (2000, 40), (200, 4)])
def test_a_steady_queue_is_seen_within_one_interval_at_a_fraction_of_the_polls(n: int, limit: int) -> None:
    outcome = simulate(n, limit)
    # Every completion is seen within poll_interval, as polling every second would see it.
    assert max(outcome.late) <= 1.0 + 1e-6
    # ... for far fewer looks: polling every second would cost (queue wait + run) / interval + 1.
    naive = statistics.mean((k // limit) * RUN + RUN + 1 for k in range(n))
    assert outcome.calls_per_job <= 20
    assert outcome.calls_per_job < naive / 3


def test_looks_are_never_sooner_than_poll_interval_nor_later_than_the_maximum() -> None:
    outcome = simulate(1000, 2, interval=0.5, max_interval=20.0)
    assert min(outcome.delays) >= 0.5
    assert max(outcome.delays) == 20.0  # the deep-queued jobs reach the bound, and none goes past it


def test_a_job_that_jumps_ahead_is_seen_at_most_max_poll_interval_late() -> None:
    # At t = 100 s, 300 queued jobs are cancelled at once: the 300 behind them start ~225 s sooner than
    # the estimate said (the estimate learnt 1.33 jobs/s; now 300 positions vanish in an instant).
    cancelled = dict.fromkeys(range(400, 700), 100.0)
    outcome = simulate(1000, 2, max_interval=30.0, cancelled=cancelled)
    assert max(outcome.late) <= 30.0 + 1.0
    # The jump is learnt at once by every wait (one shared estimate): most still see completion in time.
    assert outcome.late_quantile(0.9) <= 1.0 + 1e-6


def test_a_stalled_queue_stretches_the_looks_to_the_maximum_and_no_further() -> None:
    stall = (30.0, 150.0)  # nothing dispatched for two minutes, then the queue moves again
    outcome = simulate(400, 2, max_interval=30.0, stall=stall)
    assert max(outcome.delays) == 30.0
    assert max(outcome.late) <= 30.0 + 1.0
    # The jobs started after the stall are caught up with: most completions are seen within an interval.
    assert outcome.late_quantile(0.9) <= 1.0 + 1e-6
    unstalled = simulate(400, 2, max_interval=30.0)
    assert outcome.calls_per_job < statistics.mean(unstalled.calls) + (stall[1] - stall[0]) / 30.0 + 2


def test_cancelled_neighbours_move_jobs_up_without_them_being_seen_late() -> None:
    rng = random.Random(5)
    # 5 % of the jobs are cancelled while they wait, at random times before they would start.
    cancelled = {i: rng.uniform(0.0, (i // 2) * RUN * 0.9) for i in rng.sample(range(10, 500), 25)}
    outcome = simulate(500, 2, cancelled=cancelled)
    assert max(outcome.late) <= 1.0 + 1e-6


def test_a_growing_position_counts_as_no_progress_never_as_a_negative_rate() -> None:
    wait = WaitPolicy(request_id="r", status_url=fresh_queue("r"), poll_interval=1.0, mode="poll")
    for t, position in [(0.0, 100), (1.0, 120), (2.0, 150), (3.0, 200)]:
        wait.seen(queued(position), now=t)
    rate = wait.schedule.drain.rate
    assert rate is None  # no position ever fell: the pace is unknown, not negative
    delay = wait.next_delay(queued(200))
    assert 1.0 <= delay <= DEFAULT_MAX_POLL_INTERVAL
    wait.seen(queued(190), now=4.0)  # the queue moves again: a positive pace, learnt at once
    assert wait.schedule.drain.rate is not None and wait.schedule.drain.rate > 0


def test_one_wait_teaches_the_others_on_the_same_queue_and_only_them() -> None:
    url = fresh_queue("a")
    teacher = WaitPolicy(request_id="a", status_url=url, poll_interval=1.0, mode="poll")
    for t in range(11):
        teacher.seen(queued(500 - 10 * t), now=float(t))  # 10 jobs a second
    pupil = WaitPolicy(request_id="b", status_url=url.replace("/requests/a/", "/requests/b/"), mode="poll")
    assert pupil.schedule.predicted_start(399) == pytest.approx(400 / 10, rel=0.05)
    assert pupil.next_delay(queued(399)) == pytest.approx(20.0, rel=0.05)  # half the predicted start
    other = WaitPolicy(request_id="c", status_url=fresh_queue("c"), mode="poll")
    assert other.schedule.predicted_start(399) is None


def test_before_the_queue_moves_looks_assume_the_fastest_pace() -> None:
    wait = WaitPolicy(request_id="r", status_url=fresh_queue("r"), poll_interval=1.0, mode="poll")
    wait.seen(queued(300), now=0.0)
    # It may start any moment, at most FASTEST_DRAIN jobs a second: 300 ahead is >= 6 s away; look at half.
    assert wait.next_delay(queued(300)) == pytest.approx(0.5 * 301 / FASTEST_DRAIN)
    wait.seen(queued(300), now=9.0)
    assert wait.next_delay(queued(3000)) == pytest.approx(0.5 * 3001 / FASTEST_DRAIN)
    assert wait.next_delay(queued(20)) == 1.0  # could be in the first wave


def test_a_pace_learnt_briefly_is_trusted_no_further_than_twice_the_time_watched_nor_less_than_the_fastest() -> None:
    url = fresh_queue("b")
    wait = WaitPolicy(request_id="b", status_url=url, poll_interval=1.0, mode="poll")
    wait.seen(queued(600), now=0.0)
    wait.seen(queued(590), now=2.0)  # 5 jobs a second, watched for 2 s
    watched = wait.schedule.drain.watched
    assert watched == pytest.approx(2.0)
    # ~30 s to start: half of it is further ahead than 2 x 2 s watched.
    assert wait.next_delay(queued(150)) == pytest.approx(TRUST_AHEAD * watched)
    # ~600 s to start, and at least 12 s even at the fastest pace: half of the fastest is always safe.
    assert wait.next_delay(queued(590)) == pytest.approx(0.5 * 591 / FASTEST_DRAIN)


def test_a_queue_that_starts_after_its_waits_is_followed_from_its_first_wave() -> None:
    # The waits watch an idle queue for 20 s (a batch submitted before its jobs are dispatched), then it
    # drains at 26.7 jobs a second: the idle time must not make the first waves look slow.
    outcome = simulate(2000, 40, ready=20.0)
    assert max(outcome.late) <= 1.0 + 1e-6


def test_the_stream_is_only_for_jobs_running_next_in_line_or_about_to_start() -> None:
    url = fresh_queue("s")
    wait = WaitPolicy(request_id="s", status_url=url, poll_interval=1.0, mode="auto")
    assert wait.use_stream and not wait.stream_now()  # the first look is a poll: where in the queue?
    for t in range(6):
        wait.seen(queued(400 - 4 * t), now=float(t))  # 4 jobs a second
    assert not wait.stream_now()  # position 380: ~95 s away, no connection held for that
    wait.seen(queued(6), now=6.0)
    assert wait.stream_now()  # ~2 s away: the stream shows the start and the end at once
    wait.seen(QueueStatus(status=QueueState.IN_PROGRESS), now=7.0)
    assert wait.stream_now()
    wait.failed(_not_served())
    assert not wait.stream_now()  # a relay: polls only
    stream = WaitPolicy(request_id="t", status_url=url.replace("/s/", "/t/"), mode="stream")
    assert stream.stream_now()  # asked for the stream: it gets it, deep in the queue too


def test_a_deep_queued_job_closes_the_in_worker_window_after_two_looks_the_submit_counting_as_one() -> None:
    now = time.time()
    deep = WaitPolicy(request_id="d", status_url=fresh_queue("d"), until=now + 10, deadline=now + 3600, mode="poll")
    deep.seen(queued(200), now=0.0)
    assert not deep.window_over()  # one look: the pace is unknown, and at the fastest it starts in ~4 s
    deep.seen(queued(196), now=1.0)  # 4 jobs a second: ~40 s to start, past the 10 s window
    assert deep.window_over() and "queue position 196" in (deep.left_window or "")
    # A worker knows the submit's answer: with its position as the first look, one poll is enough.
    fresh = WaitPolicy(request_id="f", status_url=fresh_queue("f"), until=now + 10, deadline=now + 3600, mode="poll")
    fresh.saw_before(200, at=time.time() - 1.0)
    assert not fresh.window_over()
    fresh.seen(queued(196))
    assert fresh.window_over() and "queue position 196" in (fresh.left_window or "")
    near = WaitPolicy(request_id="n", status_url=fresh_queue("n"), until=now + 10, deadline=now + 3600, mode="poll")
    near.seen(queued(20), now=0.0)
    near.seen(queued(16), now=1.0)  # ~4 s to start: it can finish in the window
    assert not near.window_over() and near.left_window is None


def test_in_the_window_a_deep_job_looks_every_poll_interval_until_the_window_decides() -> None:
    """A worker slot is held until a look shows the pace: the window does not wait the queue's long first look."""
    now = time.time()
    url = fresh_queue("w")
    window = WaitPolicy(request_id="w", status_url=url, until=now + 10, deadline=now + 3600, mode="poll")
    window.saw_before(280, at=now)  # the submit's answer; at the fastest pace it could still end in ~5.6 s
    assert not window.window_over()
    assert window.first_delay() == pytest.approx(1.0)  # not half of 281 / FASTEST_DRAIN = 2.8 s
    assert window.next_delay(queued(280)) == pytest.approx(1.0)  # the queue stood still: look again in 1 s
    # The same job in the triggerer (no window): its looks are timed by the queue.
    trigger = WaitPolicy(request_id="t", status_url=url.replace("/w/", "/t/"), deadline=now + 3600, mode="poll")
    trigger.saw_before(280, at=now)
    assert trigger.first_delay() == pytest.approx(0.5 * 281 / FASTEST_DRAIN, abs=0.05)
    assert trigger.next_delay(queued(280)) == pytest.approx(0.5 * 281 / FASTEST_DRAIN)


def test_a_job_too_deep_to_start_in_the_window_at_the_fastest_pace_closes_it_at_submit() -> None:
    now = time.time()
    wait = WaitPolicy(request_id="d", status_url=fresh_queue("d"), until=now + 10, deadline=now + 3600, mode="poll")
    wait.saw_before(1000, at=time.time())  # >= 20 s away even at FASTEST_DRAIN jobs a second
    assert wait.window_over() and "queue position 1000" in (wait.left_window or "")


def test_a_job_that_could_start_but_not_end_within_the_window_closes_it() -> None:
    """fal dispatches the job behind before this one's run is over (C >= 1): it ends no sooner than that."""
    url = fresh_queue("a")
    teacher = WaitPolicy(request_id="a", status_url=url, poll_interval=1.0, mode="poll")
    for t in range(11):
        teacher.seen(queued(40 - t), now=float(t))  # a job a second: C = 1 and jobs of 1 s, or C = 2 and 2 s
    start, end = teacher.schedule.earliest_start(10), teacher.schedule.earliest_end(10)
    assert end - start > 0.5  # one dispatch apart
    now = time.time()

    def window(request_id: str, position: int) -> WaitPolicy:
        other = url.replace("/requests/a/", f"/requests/{request_id}/")
        wait = WaitPolicy(request_id=request_id, status_url=other, until=now + (start + end) / 2, deadline=now + 3600)
        wait.saw_before(position, at=now)  # the submit's answer
        return wait

    late = window("b", 10)  # it may start within the window, but not end
    assert late.window_over() and "queue position 10, predicted to end in ~" in (late.left_window or "")
    assert not window("c", 9).window_over()  # it may end within the window: it stays


def test_the_first_look_after_a_known_position_is_planned_from_it() -> None:
    url = fresh_queue("p")
    deep = WaitPolicy(request_id="p", status_url=url, poll_interval=1.0, mode="poll")
    deep.saw_before(3000, at=time.time() - 4.0)  # a worker's look, 4 s ago, handed on in epoch seconds
    # Half of the soonest start (3,001 / FASTEST_DRAIN s), less what passed since that look.
    assert deep.first_delay() == pytest.approx(0.5 * 3001 / FASTEST_DRAIN - 4.0, abs=0.05)
    assert deep.last_look is not None and deep.last_look[0] == 3000
    assert deep.last_look[1] == pytest.approx(time.time() - 4.0, abs=0.05)  # handed on again as it came
    # A stale look (a triggerer restarted long after) or a job next in line: a random part of the interval.
    stale = WaitPolicy(request_id="s", status_url=url.replace("/p/", "/s/"), poll_interval=1.0, mode="poll")
    stale.saw_before(3000, at=time.time() - 1000.0)
    assert 0.0 <= stale.first_delay() <= 1.0
    head = WaitPolicy(request_id="h", status_url=url.replace("/p/", "/h/"), poll_interval=1.0, mode="poll")
    head.saw_before(0, at=time.time())
    assert 0.0 <= head.first_delay() <= 1.0


def test_a_job_that_may_start_after_its_deadline_does_not_close_the_window_early() -> None:
    now = time.time()
    wait = WaitPolicy(request_id="d", status_url=fresh_queue("d"), until=now + 10, deadline=now + 5, mode="poll")
    wait.seen(queued(500), now=0.0)
    wait.seen(queued(496), now=1.0)
    assert not wait.window_over()  # the deadline comes first: the wait cancels the job, as before


def test_max_poll_interval_below_poll_interval_is_refused_with_its_name() -> None:
    with pytest.raises(FluxReduxError, match=r"max_poll_interval: got 0.5; allowed: a number of seconds >= "):
        WaitPolicy(request_id="r", status_url=fresh_queue("r"), poll_interval=1.0, max_poll_interval=0.5)


def test_drain_rate_forgets_an_old_batch() -> None:
    rate = DrainRate()
    rate.observe(100, 1.0, now=1.0)
    assert rate.rate is not None and rate.rate > 50
    rate.observe(0, 1.0, now=1000.0)  # much later: a new batch, nothing moved yet
    assert rate.rate is None


def queued(position: int) -> QueueStatus:
    return QueueStatus(status=QueueState.IN_QUEUE, queue_position=position)


def fresh_queue(request_id: str) -> str:
    url = f"https://q-{uuid.uuid4().hex[:8]}.example/fal-ai/flux-1/requests/{request_id}/status"
    assert queue_key(url).endswith("/fal-ai/flux-1")
    return url


def _not_served() -> FluxReduxError:
    from airflow_flux_redux.wait import StreamUnsupportedError

    return StreamUnsupportedError("HTTP 404")


def test_in_a_stalled_queue_the_job_next_in_line_is_still_looked_at_every_interval() -> None:
    drain = DrainRate()
    drain.observe(2, 1.0, now=1.0)
    for t in range(2, 200):
        drain.observe(0, 1.0, now=float(t))  # then nothing for three minutes
    wait = WaitPolicy(request_id="r", status_url=fresh_queue("r"), poll_interval=1.0, mode="poll")
    wait.schedule.drain = drain
    assert wait.next_delay(queued(1)) >= 10.0  # one place back: the looks stretch
    assert wait.next_delay(queued(0)) == 1.0  # it starts with the next slot that frees, whenever that is
