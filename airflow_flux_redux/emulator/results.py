"""``GET {owner}/{app}/requests/{id}``: the job's outcome, and the images behind it, made once on demand."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import TYPE_CHECKING

from airflow_flux_redux.emulator import images
from airflow_flux_redux.emulator.jobs import dumps, model_error
from airflow_flux_redux.emulator.lookup import job_for
from airflow_flux_redux.models import QueueState

if TYPE_CHECKING:
    from airflow_flux_redux.emulator.call import Call
    from airflow_flux_redux.emulator.jobs import Job
    from airflow_flux_redux.emulator.state import EmulatorState

logger = logging.getLogger(__name__)


async def resolve(state: EmulatorState, job: Job, wait: bool) -> None:
    """Start making the job's images (once); with ``wait``, return only when its outcome is known."""
    if job.failure is not None or job.images is not None or job.expired:
        return
    if job.generation is None:
        job.generation = asyncio.ensure_future(_generate(state, job))
    if wait:
        await asyncio.shield(job.generation)


async def _generate(state: EmulatorState, job: Job) -> None:
    request, config = job.request, state.config
    try:
        data = await images.fetch_input(request.image_url, state.http(), config.max_input_bytes)
        size = images.output_size(request.image_size, config.max_side)
        job.images = await asyncio.to_thread(
            images.make_variations, data, size, job.seed, request.num_images, request.output_format or "jpeg"
        )
    except images.InputImageError as err:
        job.failure = job.failure or model_error(422, err.error_type, str(err))
    except Exception:  # a bug here must fail the job visibly instead of hanging every poller
        logger.exception("emulator: generating images for %s failed", job.id)
        job.failure = job.failure or model_error(500, "internal_server_error", "Internal server error")


async def result(state: EmulatorState, call: Call, prefix: str, job_id: str) -> None:
    job = await job_for(state, call, "result", prefix, job_id)
    if job is None:
        return
    job.result_fetches += 1
    now = time.monotonic()
    if job.state(now) is not QueueState.COMPLETED:
        await call.json(400, {"detail": "Request is still in progress"})
        return
    await resolve(state, job, wait=True)
    if not job.expired and state.faults.rules and state.faults.take("result", {"expire_result"}):
        job.expired, job.images = True, None
    if state.expired(job, now):
        await call.json(404, {"detail": "Result expired", "error_type": "result_expired"})
    elif job.failure is not None:
        await call.reply(job.failure.code, job.failure.body, job.failure.headers)
    else:
        await call.reply(200, _body(job, state.base_url(call)), [(b"x-fal-billable-units", _megapixels(job))])


def _megapixels(job: Job) -> bytes:
    """``X-Fal-Billable-Units``: megapixels generated, summed over the images, as a decimal string."""
    pixels = sum(image.width * image.height for image in job.images or ())
    return f"{pixels / 1e6:.6f}".rstrip("0").rstrip(".").encode()


def _body(job: Job, base: str) -> bytes:
    request, made = job.request, job.images or []
    outputs = []
    for index, image in enumerate(made):
        name = f"{index}.{image.output_format}"
        url = (
            f"data:{image.content_type};base64,{base64.b64encode(image.data).decode()}"
            if request.sync_mode
            else f"{base}/files/{job.id}/{name}"
        )
        outputs.append({
            "url": url,
            "width": image.width,
            "height": image.height,
            "content_type": image.content_type,
            "file_name": f"{job.id}-{name}",
            "file_size": len(image.data),
        })  # fmt: skip
    return dumps({
        "images": outputs,
        "timings": {"inference": round(job.planned_run, 3)},
        "seed": job.seed,
        "has_nsfw_concepts": [False] * len(outputs),
        "prompt": "",
    })  # fmt: skip
