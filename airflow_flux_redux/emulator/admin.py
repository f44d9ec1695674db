"""``/_emulator/...``: stats, fault rules, live config, reset and a sample input image; no auth, like a fixture."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from airflow_flux_redux.emulator import images

if TYPE_CHECKING:
    from airflow_flux_redux.emulator.call import Call
    from airflow_flux_redux.emulator.state import EmulatorState


async def admin(state: EmulatorState, call: Call) -> None:
    action = (call.method, "/".join(call.parts[1:]))
    if action == ("GET", "stats"):
        await call.json(200, state.stats(summary=call.flag("summary")))
    elif action == ("GET", "faults"):
        await call.json(200, {"faults": [asdict(rule) for rule in state.faults.rules]})
    elif action == ("GET", "config"):
        await call.json(200, state.config.live())
    elif action in (("POST", "faults"), ("POST", "config")):
        await _change(state, call, action[1])
    elif action == ("POST", "reset"):
        state.faults.replace([])
        state.faults.fired.clear()
        state.clear()
        await call.json(200, {"reset": True})
    elif action == ("GET", "sample.png"):
        try:
            width, height = (min(4096, max(1, int(call.query.get(k) or 256))) for k in ("width", "height"))
        except ValueError:
            await call.json(400, {"detail": "width and height must be integers"})
            return
        png = await asyncio.to_thread(images.sample_image, width, height)
        await call.reply(200, png, content_type=b"image/png")
    else:
        await call.json(404, {"detail": "Not Found"})


async def _change(state: EmulatorState, call: Call, what: str) -> None:
    """Replace the fault rules or change live config fields; 400 naming the problem, and nothing changes."""
    try:
        data = json.loads(await call.body() or b"{}")
        if what == "faults":
            state.faults.replace(data.get("faults", []))
        else:
            state.config.apply_live(data)
    except (ValueError, TypeError, AttributeError) as err:
        await call.json(400, {"detail": str(err)})
        return
    await call.json(200, {"faults": len(state.faults.rules)} if what == "faults" else state.config.live())
