"""What differs between the supported Airflow versions (2.11, 3.0 through 3.3), in one place.

Names that only moved between versions come from ``airflow.providers.common.compat.sdk``; this module
holds the rest: which newer features exist here, the one log line a task writes when one is missing,
and the few calls that are spelled differently. The version constants are computed here, as the
official providers do, rather than imported from another provider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging


def get_base_airflow_version_tuple() -> tuple[int, int, int]:
    from airflow import __version__
    from packaging.version import Version

    version = Version(__version__)
    return version.major, version.minor, version.micro


AIRFLOW_VERSION = get_base_airflow_version_tuple()
AIRFLOW_V_3_0_PLUS = AIRFLOW_VERSION >= (3, 0, 0)
AIRFLOW_V_3_3_PLUS = AIRFLOW_VERSION >= (3, 3, 0)

#: Airflow 3.0's ``DecoratedOperator.execute`` reads ``self.xcom_push`` (and ignores it), which the Task SDK's
#: BaseOperator lacks (apache/airflow#53077): a decorated operator built on it must supply one there. 3.1 dropped
#: the read; Airflow 2's BaseOperator has the method.
DECORATED_OPERATOR_READS_XCOM_PUSH = (3, 0, 0) <= AIRFLOW_VERSION < (3, 1, 0)

#: ``ResumableJobMixin`` with its ``task_state_store`` (Airflow 3.3+): a retry reconnects to the submitted job.
#: Below 3.3 common-compat's stand-in submits on every try.
HAS_TASK_STATE_STORE = AIRFLOW_V_3_3_PLUS


#: Seconds a trigger holds an event that comes soon after its task deferred. Airflow 3.3.2 (and earlier) fails
#: a task resumed before the scheduler has processed the deferring workload's exit report, which comes some
#: seconds after the deferral (apache/airflow#72716, #71580; fixes proposed in #71579, #72767, #73546).
#: Measured on LocalExecutor: the report comes ~5 s after deferring. ``[flux_redux] defer_event_hold`` (env
#: ``AIRFLOW__FLUX_REDUX__DEFER_EVENT_HOLD``) overrides it; drop the hold once those fixes ship.
DEFER_EVENT_HOLD = 10.0


def _trigger_on_kill() -> bool:
    from airflow.triggers.base import BaseTrigger

    return hasattr(BaseTrigger, "on_kill")


#: The triggerer calls ``Trigger.on_kill`` when a user marks a deferred task failed/success or clears it.
TRIGGER_ON_KILL = _trigger_on_kill()


def log_degraded_features(log: logging.Logger | Any, *, deferrable: bool, cancel_on_kill: bool) -> None:
    """One line per feature this Airflow lacks, so a task log says why it behaves differently."""
    version = ".".join(map(str, AIRFLOW_VERSION))
    if not HAS_TASK_STATE_STORE:
        log.info(
            "Airflow %s has no task_state_store (Airflow 3.3+): a retry of this task submits a new fal "
            "request instead of reconnecting to the one already submitted.",
            version,
        )
    if deferrable and cancel_on_kill and not TRIGGER_ON_KILL:
        log.info(
            "Airflow %s's triggerer does not call Trigger.on_kill (Airflow 3.3+): marking this task failed or "
            "clearing it while deferred does not cancel the fal request; the timeout still does.",
            version,
        )


def task_state(ti: Any) -> str | None:
    """The current state of a trigger's task instance (blocking: call it through ``sync_to_async``)."""
    map_index = getattr(ti, "map_index", -1)
    map_index = -1 if map_index is None else map_index
    if not AIRFLOW_V_3_0_PLUS:
        # Airflow 2's triggerer hands the trigger the ORM task instance, and has the metadata DB.
        state = ti.current_state()
    else:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        states = RuntimeTaskInstance.get_task_states(
            dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id], map_index=map_index
        )
        key = f"{ti.task_id}_{map_index}" if map_index >= 0 else ti.task_id
        state = states.get(ti.run_id, {}).get(key)
    return None if state is None else str(getattr(state, "value", state))
