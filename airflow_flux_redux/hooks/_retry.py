"""The one retry policy of every queue call: which errors, how often, how long between tries (tenacity).

Which answers are retryable at all is decided where they are read (``_answers``); this module counts
tries and waits. The sync and async runners share the policy; the async one tries once outside tenacity,
since almost every poll succeeds first time.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from airflow_flux_redux.exceptions import FluxReduxError, FluxReduxTransportError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from airflow_flux_redux.hooks._settings import FluxReduxSettings

T = TypeVar("T")


class Backoff:
    """Capped exponential backoff with full jitter; a server's ``Retry-After`` wins (capped too)."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, FluxReduxTransportError) and error.retry_after is not None:
            return min(self.cap, error.retry_after)
        ceiling = min(self.cap, self.initial * 2 ** (state.attempt_number - 1))
        return random.uniform(ceiling / 2, ceiling)


def _retryable(error: BaseException) -> bool:
    return isinstance(error, FluxReduxTransportError) and error.retryable


def _policy(settings: FluxReduxSettings, op: str, log: Any) -> dict[str, Any]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "fal %s failed (%s); try %d of %d in %.1fs",
            op,
            error,
            state.attempt_number + 1,
            settings.max_retries + 1,
            state.next_action.sleep if state.next_action else 0.0,
        )

    return {
        "retry": retry_if_exception(_retryable),
        "stop": stop_after_attempt(settings.max_retries + 1),
        "wait": Backoff(settings.retry_initial_wait, settings.retry_max_wait),
        "before_sleep": before_sleep,
        "reraise": True,
    }


def gave_up(error: FluxReduxError, settings: FluxReduxSettings) -> FluxReduxError:
    """The error to raise once tries are spent: it says how many there were."""
    if _retryable(error) and settings.max_retries > 0:
        assert isinstance(error, FluxReduxTransportError)
        return FluxReduxTransportError(
            f"gave up after {settings.max_retries + 1} tries: {error}",
            request_id=error.request_id,
            status_code=error.status_code,
        )
    return error


def call_with_retries(settings: FluxReduxSettings, op: str, log: Any, attempt: Callable[[], T]) -> T:
    try:
        return Retrying(**_policy(settings, op, log))(attempt)
    except FluxReduxError as err:
        raise gave_up(err, settings) from None


async def acall_with_retries(settings: FluxReduxSettings, op: str, log: Any, attempt: Callable[[], Awaitable[T]]) -> T:
    """The first try runs bare (the common case: no retry machinery per poll); a failure replays into it."""
    try:
        return await attempt()
    except FluxReduxError as err:
        if not _retryable(err) or settings.max_retries <= 0:
            raise gave_up(err, settings) from None
        first: FluxReduxError | None = err

    async def replay() -> T:
        nonlocal first
        if first is not None:
            error, first = first, None
            raise error
        return await attempt()

    try:
        return await AsyncRetrying(**_policy(settings, op, log))(replay)
    except FluxReduxError as err:
        raise gave_up(err, settings) from None
