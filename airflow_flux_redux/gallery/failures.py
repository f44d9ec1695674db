"""Why a task failed, for the gallery's card: the exception type from the task's own log.

Airflow 3 keeps no error column on the task instance; its task runner logs "Task failed with exception"
with a structured ``error_detail`` (``exc_type``, ``exc_value``). The gallery reads it with Airflow's own
log reader, as the UI's Logs tab does (local file, worker log server or remote logging).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: How much of the exception's message a card shows (the task log has all of it).
_MAX_DETAIL = 160


def _detail(message: Any) -> str | None:
    details = (getattr(message, "model_extra", None) or {}).get("error_detail")
    if not isinstance(details, list) or not details or not isinstance(details[-1], dict):
        return None
    last = details[-1]
    kind = str(last.get("exc_type") or "").rsplit(".", 1)[-1]
    value = str(last.get("exc_value") or "")
    if not kind:
        return None
    return f"{kind}: {value[:_MAX_DETAIL]}" if value else kind


def failure_type(ti: Any) -> str | None:
    """``ExceptionType: message`` of the task's last try, or None where the log cannot say."""
    try:
        from airflow.utils.log.log_reader import TaskLogReader

        reader = TaskLogReader()
        if not reader.supports_read:
            return None
        messages, _ = reader.read_log_chunks(ti, ti.try_number, {})  # type: ignore[typeddict-item]
        found = None
        for message in messages:
            found = _detail(message) or found
        return found
    except Exception as err:
        # A missing or unreadable log is no reason to fail the page: the card says "failed" alone.
        log.debug("No failure detail for %s: %s", ti, err)
        return None
