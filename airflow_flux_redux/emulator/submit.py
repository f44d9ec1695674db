"""``POST {owner}/{app}/...``: validate the input, schedule the job, answer with its queue URLs."""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from airflow_flux_redux.emulator import faults
from airflow_flux_redux.emulator.auth import account_of, gate
from airflow_flux_redux.emulator.call import MAX_BODY
from airflow_flux_redux.emulator.jobs import START_TIMEOUT, Failure, Job, model_error, request_error
from airflow_flux_redux.emulator.options import read_options
from airflow_flux_redux.models import FluxReduxRequest, describe_validation_error

if TYPE_CHECKING:
    from airflow_flux_redux.emulator.call import Call
    from airflow_flux_redux.emulator.state import EmulatorState

_JOB_FAULTS = frozenset({"fail_job", "completed_error_result_ok"})
# An image_url containing "emulator-fail=<name>" fails its job as the model would.
_FAIL_MARKER = re.compile(r"emulator-fail=([a-z_]+)")
_MARKED_FAILURES = {
    "content_policy": (422, "content_policy_violation", "The input image was flagged by the safety checker"),
    "image_too_large": (422, "image_too_large", "The input image is too large"),
    "file_download": (422, "file_download_error", "Failed to download the input image"),
    "generation_timeout": (504, "generation_timeout", "Generation timed out"),
    "internal": (500, "internal_server_error", "Internal server error"),
}


def _validation_detail(error: ValidationError) -> list[dict[str, Any]]:
    """fal's 422 ``detail`` list, one entry per bad field, worded by the shared models."""
    errors = [([str(p) for p in item["loc"]], item["type"]) for item in error.errors()]
    detail = []
    for line in describe_validation_error(error):
        name, _, message = line.partition(": ")
        parts = [] if name == "request" else name.split(".")
        error_type = next(
            (kind for loc, kind in errors if not parts or (loc[:1] == parts[:1] and loc[-1:] == parts[-1:])),
            next((kind for loc, kind in errors if loc[:1] == parts[:1]), "value_error"),
        )
        detail.append({"loc": ["body", *parts], "msg": message, "type": error_type})
    return detail


def _float_header(call: Call, name: bytes, default: float | None) -> float | None:
    value = call.headers.get(name)
    try:
        return max(0.0, float(value)) if value else default
    except ValueError:
        return default


async def _parse(call: Call) -> FluxReduxRequest | None:
    """The validated input, or None after answering 413/422 as fal does."""
    raw = await call.body()
    if raw is None:
        await call.json(413, {"detail": f"Request body larger than {MAX_BODY} bytes"})
        return None
    try:
        return FluxReduxRequest.model_validate_json(raw or b"null")
    except ValidationError as err:
        if any(e["type"] == "json_invalid" for e in err.errors()):
            detail = [{"loc": ["body"], "msg": "The body is not valid JSON", "type": "json_invalid"}]
        else:
            detail = _validation_detail(err)
        await call.json(422, {"detail": detail})
        return None


async def submit(state: EmulatorState, call: Call) -> None:
    if not await gate(state, call, "submit"):
        return
    rule = state.faults.take("submit", faults.ANYWHERE | {"missing_fields"}) if state.faults.rules else None
    if rule is not None and not rule.after_accept and await faults.answer(call, "submit", rule):
        return
    options = read_options(call)
    if isinstance(options, Failure):
        await call.reply(options.code, options.body, options.headers)
        return
    request = await _parse(call)
    if request is None:
        return
    limit, queued = options.max_queue_length, state.table.queue_length(time.monotonic(), account_of(call))
    if limit is not None and queued >= limit:
        message = f"{queued} requests are queued, fal_max_queue_length={limit}"
        full = request_error(429, "queue_full", message, [(b"x-fal-needs-retry", b"1")])
        await call.reply(full.code, full.body, full.headers)
        return
    job = _accept(state, call, "/".join(call.parts[:2]), request)
    job.lifetime, job.fal_options = options.lifetime, options.seen
    job.short_lived = not options.store_io and request.sync_mode
    if rule is not None and rule.after_accept and await faults.answer(call, "submit", rule):
        return
    answer = {
        "status": "IN_QUEUE",
        "request_id": job.id,
        "response_url": job.response_url,
        "status_url": f"{job.response_url}/status",
        "cancel_url": f"{job.response_url}/cancel",
        "queue_position": state.table.queue_position(job, time.monotonic()),
        "logs": None,
        "metrics": {},
    }
    if rule is not None and rule.kind == "missing_fields":
        for name in ("status_url", "response_url", "cancel_url"):
            del answer[name]
    await call.json(200, answer)


def _accept(state: EmulatorState, call: Call, prefix: str, request: FluxReduxRequest) -> Job:
    """Create and schedule the job, with any failure it is bound to have."""
    config, now = state.config, time.monotonic()
    queue_seconds, run_seconds = config.timing_for(request.seed)
    queue_seconds = _float_header(call, b"x-emulator-queue-seconds", queue_seconds) or 0.0
    run_seconds = _float_header(call, b"x-emulator-run-seconds", run_seconds) or 0.0
    account = account_of(call)
    start = state.table.schedule(account, now + queue_seconds, run_seconds, config.concurrency_limit)
    seed = request.seed if request.seed is not None else state.rng.randrange(2**31)
    job = Job(
        str(uuid.uuid4()), prefix, request, seed, state.queue_url(call),
        now, start, start + run_seconds, config.log_lines, time.time() - now, account, now + queue_seconds,
    )  # fmt: skip
    failure: Failure | None = None
    deadline = _float_header(call, b"x-fal-request-timeout", None)
    marker = _FAIL_MARKER.search(request.image_url)
    if deadline is not None and start > now + deadline:
        job.start_at = job.finish_at = now + deadline
        failure = START_TIMEOUT
    elif state.faults.rules and (rule := state.faults.take("submit", _JOB_FAULTS)):
        error = model_error(
            rule.code or 422,
            rule.error_type or "content_policy_violation",
            rule.message or "The input image was flagged by the safety checker",
        )
        if rule.kind == "fail_job":
            failure = error
        else:  # completed_error_result_ok: only the status says it failed
            job.reported_error = error
    elif marker and marker.group(1) in _MARKED_FAILURES:
        failure = model_error(*_MARKED_FAILURES[marker.group(1)])
    job.failure = failure
    state.table.add(job)
    state.submitted_ids.append(job.id)
    state.images_submitted[job.image_hash] += 1
    return job
