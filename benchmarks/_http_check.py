"""The response check for the HttpEventTrigger yardstick: a tiny module, since the trigger reloads it every poll."""

from __future__ import annotations

from typing import Any


async def completed(response: Any) -> bool:
    return response.status_code == 200 and b'"COMPLETED"' in response.content
