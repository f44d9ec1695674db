"""``GET files/{id}/{index}.{ext}``: the generated images, without auth, like fal's CDN; and their faults."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from airflow_flux_redux.emulator import faults
from airflow_flux_redux.emulator.results import resolve
from airflow_flux_redux.models import QueueState

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_flux_redux.emulator.call import Call
    from airflow_flux_redux.emulator.state import EmulatorState

_FILE_KINDS = frozenset({"huge_file", "huge_chunked_file", "wrong_content_type"})


async def file(state: EmulatorState, call: Call) -> None:
    state.by_route["file"] += 1
    if await faults.fire(state, call, "file", faults.ANYWHERE):
        return
    _, job_id, name = call.parts
    index, _, extension = name.partition(".")
    job, now = state.table.jobs.get(job_id), time.monotonic()
    if job is None or job.state(now) is not QueueState.COMPLETED or state.expired(job, now):
        await call.json(404, {"detail": "File not found"})
        return
    await resolve(state, job, wait=True)
    made = job.images or []
    if not index.isdigit() or int(index) >= len(made) or made[int(index)].output_format != extension:
        await call.json(404, {"detail": "File not found"})
        return
    image = made[int(index)]
    content_type = image.content_type.encode()
    rule = state.faults.take("file", _FILE_KINDS) if state.faults.rules else None
    if rule is None:
        await call.reply(200, image.data, [(b"cache-control", b"public, max-age=3600")], content_type)
    elif rule.kind == "wrong_content_type":
        await call.reply(200, b"<html><body>Service unavailable</body></html>", content_type=b"text/html")
    else:  # huge_file declares its length; huge_chunked_file does not, so the server sends it chunked
        headers = [(b"content-type", content_type)]
        if rule.kind == "huge_file":
            headers.append((b"content-length", b"%d" % rule.bytes))
        await call.stream(200, headers, _zeros(rule.bytes))


def _zeros(size: int) -> Iterator[bytes]:
    """``size`` bytes in 1 MiB parts, so the emulator itself does not hold a huge body in memory."""
    chunk = b"\0" * min(size, 1 << 20)
    while size > 0:
        part = chunk[:size]
        size -= len(part)
        yield part
