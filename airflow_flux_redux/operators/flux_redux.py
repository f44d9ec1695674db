"""FluxReduxOperator: submit one FLUX.1 [schnell] Redux job and wait for it, deferred by default."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    BaseOperator,
    ObjectStoragePath,
    ResumableJobMixin,
    conf,
)

from airflow_flux_redux.exceptions import (
    FluxReduxError,
    FluxReduxProtocolError,
    FluxReduxRequestRejectedError,
    FluxReduxResultExpiredError,
    FluxReduxSubmitUncertainError,
    error_from_dict,
)
from airflow_flux_redux.hooks.flux_redux import FluxReduxAsyncHook, FluxReduxHook
from airflow_flux_redux.inputs import input_image_url
from airflow_flux_redux.links import FIRST_IMAGE_ATTR, XCOM_IMAGE_URL, XCOM_REQUEST_ID, XCOM_STATUS_URL, operator_links
from airflow_flux_redux.models import (
    FluxReduxRequest,
    QueueHandle,
    QueueState,
    QueueStatus,
    ReduxResult,
    validate_request,
)
from airflow_flux_redux.operators._output import (
    DEFAULT_OUTPUT_NAME,
    check_output_name,
    input_reference,
    output_file_name,
    result_cost,
)
from airflow_flux_redux.triggers.flux_redux import FluxReduxTrigger
from airflow_flux_redux.version_compat import DEFER_EVENT_HOLD, log_degraded_features
from airflow_flux_redux.wait import (
    DEFAULT_MAX_POLL_INTERVAL,
    StatusReporter,
    WaitMode,
    WaitPolicy,
    check_max_poll_interval,
    raise_if_failed,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.providers.common.compat.sdk import Context
    from pydantic import JsonValue

_ACTIVE = {QueueState.IN_QUEUE.value, QueueState.IN_PROGRESS.value}
_SUCCEEDED = "SUCCEEDED"
# Real schnell Redux jobs take 1-2 s plus a short queue: they finish inside this window without deferring.
# Chosen by measurement (benchmarks/bench_fast_jobs.py, README "Waiting in the worker first").
DEFAULT_DEFER_AFTER = 10.0
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}


def _default_deferrable() -> bool:
    """True, unless ``[operators] default_deferrable`` is set in the environment.

    Airflow writes ``default_deferrable = false`` into every airflow.cfg it generates, so a value in the
    file cannot be told apart from that default; an environment variable is always a deliberate choice.
    """
    if "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE" in os.environ:
        return conf.getboolean("operators", "default_deferrable")
    return True


class FluxReduxOperator(ResumableJobMixin, BaseOperator):
    """Make image variations of ``image_url`` with FLUX.1 [schnell] Redux on fal.ai or a fal-compatible gateway.

    The request is validated before anything is sent. The request id and status URL go to XCom at once
    and to the task's state store, so a retry reconnects to the same job instead of paying twice. The wait
    runs in the triggerer when ``deferrable`` (the default), otherwise in the worker. Returns (XCom) a dict
    with ``request_id``, ``images`` (url, width, height, content_type and ``path`` where saved), ``seed``,
    ``has_nsfw_concepts``, ``timings`` and ``metrics``.

    :param image_url: The input image: an http(s) URL or ``data:`` URI as is; a local path, ``file://`` URI,
        ``ObjectStoragePath`` or other object-storage URI is read and sent as a ``data:`` URI, only if it is a
        regular file whose bytes are a PNG, JPEG, WebP, GIF or AVIF image (``inputs``). (templated)
    :param image_size: A preset (square_hd, square, portrait_4_3, portrait_16_9, landscape_4_3,
        landscape_16_9) or ``{"width": w, "height": h}``, each 1..14142. (templated)
    :param num_inference_steps: 1..12, default 4. (templated)
    :param seed: Fixes the output for a given input. (templated)
    :param sync_mode: Return images inline as data URIs instead of URLs. (templated)
    :param num_images: 1..4, default 1. (templated)
    :param enable_safety_checker: fal's NSFW check, default True. (templated)
    :param output_format: ``jpeg`` or ``png``; the server's default when unset. (templated)
    :param acceleration: ``none``, ``regular`` or ``high``; the server's default when unset. (templated)
    :param output_path: Folder (any ``ObjectStoragePath`` location, ``file://`` included) to stream the
        images into. (templated)
    :param output_name: File name of each saved image, without extension: a pattern with the fields
        ``{request_id}``, ``{index}`` (required: a job makes up to 4 images) and ``{input_stem}`` (the input's
        file name without extension); default ``{request_id}_{index}``. (templated, so ``{{ ds }}`` works too)
    :param flux_redux_conn_id: The ``flux_redux`` connection.
    :param deferrable: Wait in the triggerer (the default). ``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE``
        changes the default; airflow.cfg's value is not used, as Airflow writes ``false`` there by default.
    :param defer_after: Seconds (or ``timedelta``) to follow the job in the worker before deferring; a job that
        completes sooner finishes right there. 0 defers at once. Only with ``deferrable``. A job whose place in
        fal's queue says it cannot end within the window defers as soon as that is known (1-2 looks).
    :param poll_interval: Seconds between status polls of a running job (the shortest delay).
    :param max_poll_interval: The longest delay between two looks at a job waiting in fal's queue (default
        60 s): a queued job is looked at less often the further back it is (``airflow_flux_redux.wait``).
    :param timeout: The whole wait (seconds or ``timedelta``), from submit; the remote job is cancelled
        when it passes.
    :param cancel_on_kill: Cancel the remote job when the task is killed or marked failed while deferred.
    :param wait_mode: How the wait follows the job, in the worker and in the triggerer: ``poll``, ``stream`` or
        ``auto`` (the status stream where the server serves it, else polling).
    :param max_input_bytes: Largest local input image sent as a data URI.
    :param max_image_bytes: Largest output image downloaded.

    Request fields given literally (no ``{{``) are checked when the DAG is parsed, with the message a run would
    give; templated ones when the task runs.
    """

    template_fields: Sequence[str] = (
        "image_url",
        "image_size",
        "num_inference_steps",
        "seed",
        "sync_mode",
        "num_images",
        "enable_safety_checker",
        "output_format",
        "acceleration",
        "output_path",
        "output_name",
    )
    template_fields_renderers = {"image_size": "json"}
    operator_extra_links = operator_links()
    ui_color = "#f2e6ff"
    external_id_key = "flux_redux_request"

    def __init__(
        self,
        *,
        image_url: str | ObjectStoragePath,
        image_size: str | dict[str, int] | None = None,
        num_inference_steps: int = 4,
        seed: int | None = None,
        sync_mode: bool = False,
        num_images: int = 1,
        enable_safety_checker: bool = True,
        output_format: Literal["jpeg", "png"] | None = None,
        acceleration: Literal["none", "regular", "high"] | None = None,
        output_path: str | ObjectStoragePath | None = None,
        output_name: str = DEFAULT_OUTPUT_NAME,
        flux_redux_conn_id: str = FluxReduxHook.default_conn_name,
        deferrable: bool | None = None,
        defer_after: float | timedelta = DEFAULT_DEFER_AFTER,
        poll_interval: float = 1.0,
        timeout: float | timedelta = timedelta(hours=1),
        cancel_on_kill: bool = True,
        wait_mode: WaitMode = "auto",
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        max_input_bytes: int = 10 * 1024 * 1024,
        max_image_bytes: int = 64 * 1024 * 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image_url = image_url
        self.image_size = image_size
        self.num_inference_steps = num_inference_steps
        self.seed = seed
        self.sync_mode = sync_mode
        self.num_images = num_images
        self.enable_safety_checker = enable_safety_checker
        self.output_format = output_format
        self.acceleration = acceleration
        self.output_path = output_path
        self.output_name = check_output_name(output_name)
        self.flux_redux_conn_id = flux_redux_conn_id
        self.deferrable = _default_deferrable() if deferrable is None else deferrable
        self.defer_after = max(0.0, defer_after.total_seconds() if isinstance(defer_after, timedelta) else defer_after)
        self.poll_interval = poll_interval
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        self.cancel_on_kill = cancel_on_kill
        self.wait_mode = wait_mode
        self.max_poll_interval = check_max_poll_interval(max_poll_interval, poll_interval)
        self.max_input_bytes = max_input_bytes
        self.max_image_bytes = max_image_bytes
        _validate_literals(
            {
                "image_size": image_size,
                "num_inference_steps": num_inference_steps,
                "seed": seed,
                "sync_mode": sync_mode,
                "num_images": num_images,
                "enable_safety_checker": enable_safety_checker,
                "output_format": output_format,
                "acceleration": acceleration,
            }
        )
        self._request: FluxReduxRequest | None = None
        self._handle: QueueHandle | None = None
        self._result: ReduxResult | None = None
        self._metrics: dict[str, Any] = {}
        # This process's last look at its job in fal's queue: request id, position and when (epoch seconds),
        # from the submit's answer, then from the in-worker window; the next wait's first look (the window's,
        # then the trigger's) is planned from it (the stored handle keeps no position).
        self._last_look: tuple[str, int | None, float] | None = None
        self._lineage: tuple[list[str], list[str | None]] = ([], [])

    @cached_property
    def hook(self) -> FluxReduxHook:
        return FluxReduxHook(flux_redux_conn_id=self.flux_redux_conn_id)

    # -- building the request ------------------------------------------------------------------------------

    def build_request(self) -> FluxReduxRequest:
        """Validate every field (before any network call), reading a local input image into a data URI."""
        return validate_request(
            {
                "image_url": input_image_url(self.image_url, self.max_input_bytes),
                "image_size": self.image_size,
                "num_inference_steps": self.num_inference_steps,
                "seed": self.seed,
                "sync_mode": self.sync_mode,
                "num_images": self.num_images,
                "enable_safety_checker": self.enable_safety_checker,
                "output_format": self.output_format,
                "acceleration": self.acceleration,
            }
        )

    # -- ResumableJobMixin: submit once, reconnect on retry ------------------------------------------------

    def execute(self, context: Context) -> Any:
        self._request = self.build_request()
        log_degraded_features(self.log, deferrable=self.deferrable, cancel_on_kill=self.cancel_on_kill)
        output = self.execute_resumable(context)
        if output is None and self._handle is not None and self._result is not None:
            # On reconnect, ResumableJobMixin (Airflow 3.3.2) returns poll_until_complete()'s None and never
            # calls get_job_result(): finish here, or the retry would save no image and return nothing.
            return self._finish(
                context, self._handle, self._result, metrics=self._metrics, reference=input_reference(self.image_url)
            )
        return output

    def submit_job(self, context: Context) -> JsonValue:
        try:
            handle = self.hook.submit(self._request or self.build_request())
        except FluxReduxSubmitUncertainError as err:
            # A task retry would submit again and could pay twice: fail without retries, say what to check.
            raise AirflowFailException(str(err)) from err
        self._last_look = (handle.request_id, handle.queue_position, time.time())
        self.log.info("Submitted fal request %s (queue position %s)", handle.request_id, handle.queue_position)
        self._remember(context, handle)
        stored: dict[str, JsonValue] = {"handle": dict(handle.to_dict()), "deadline": time.time() + self.timeout}
        return stored

    def _remember(self, context: Context, handle: QueueHandle) -> None:
        """This try's request: on the operator (``on_kill``) and in XCom (links), also when reconnected."""
        self._handle = handle
        try:
            ti = context["ti"]
            ti.xcom_push(key=XCOM_REQUEST_ID, value=handle.request_id)
            ti.xcom_push(key=XCOM_STATUS_URL, value=handle.status_url)
        except Exception as err:
            # The id must still reach the state store (the mixin stores what we return), or a retry pays twice.
            self.log.warning("Could not push request %s to XCom: %s", handle.request_id, err)

    def get_job_status(self, external_id: JsonValue, context: Context) -> str:
        handle, _ = _stored(external_id)
        self._remember(context, handle)
        try:
            status = self.hook.status(handle, logs=False)
        except FluxReduxRequestRejectedError as err:
            self.log.warning("Stored request %s cannot be read (%s); submitting anew.", handle.request_id, err)
            return "UNKNOWN"
        if status.status is QueueState.COMPLETED:
            return "FAILED" if status.failed else _SUCCEEDED
        return status.status.value

    def is_job_active(self, status: str) -> bool:
        return status in _ACTIVE

    def is_job_succeeded(self, status: str) -> bool:
        return status == _SUCCEEDED

    def poll_until_complete(self, external_id: JsonValue, context: Context) -> None:
        """Follow the job in the worker for ``defer_after`` seconds (all the way when not deferrable), then defer.

        A real-speed job (1-2 s) finishes inside the window and never defers: no triggerer round trip, and no
        exposure to Airflow's race between a fast trigger event and the deferral (apache/airflow#72716).
        """
        handle, deadline = _stored(external_id)
        self._handle = handle
        window_end = time.time() + self.defer_after if self.deferrable else None
        if window_end is None or self.defer_after > 0:
            final = self._follow_in_worker(handle, deadline, window_end)
            if final is not None:
                raise_if_failed(final, handle.request_id)
                self._result = self.hook.result(handle)
                self._metrics = final.metrics
                return
        position, position_at = self._queue_look(handle)
        self.defer(
            trigger=FluxReduxTrigger(
                handle=handle.to_dict(),
                deadline=deadline,
                flux_redux_conn_id=self.flux_redux_conn_id,
                poll_interval=self.poll_interval,
                wait_mode=self.wait_mode,
                cancel_on_kill=self.cancel_on_kill,
                not_before=_not_before(),
                input_reference=input_reference(self.image_url),
                max_poll_interval=self.max_poll_interval,
                queue_position=position,
                position_at=position_at,
            ),
            method_name="execute_complete",
            timeout=None,
        )

    def _follow_in_worker(self, handle: QueueHandle, deadline: float, until: float | None) -> QueueStatus | None:
        """The trigger's own wait (``FluxReduxAsyncHook.follow``: stream or polling), run in this worker.

        Returns None when the window ended first, or as soon as the job's queue position says it cannot start
        within the window: then the task defers instead of holding its worker slot.
        """
        settings = self.hook.settings
        policy = WaitPolicy(
            request_id=handle.request_id,
            status_url=handle.status_url,
            deadline=deadline,
            until=until,
            poll_interval=self.poll_interval,
            mode=self.wait_mode,
            on_status=StatusReporter(self.log, handle.request_id),
            max_poll_interval=self.max_poll_interval,
        )
        position, at = self._queue_look(handle)
        if position is not None and at is not None:
            policy.saw_before(position, at)

        async def follow() -> QueueStatus | None:
            hook = FluxReduxAsyncHook(flux_redux_conn_id=self.flux_redux_conn_id)
            hook.use_settings(settings)
            return await hook.follow(handle, policy)  # its clients close as it ends

        # A job too deep to end within the window even at the fastest pace: no event loop, no poll.
        final = None if policy.window_over() else asyncio.run(follow())
        look = policy.last_look
        self._last_look = None if look is None else (handle.request_id, *look)  # None: it ran
        if final is None and policy.left_window:
            self.log.info(
                "Request %s is deep in fal's queue (%s), past the %.0fs in-worker window; deferring now.",
                handle.request_id,
                policy.left_window,
                self.defer_after,
            )
        elif final is None:
            self.log.info("Request %s still running after %.0fs; deferring.", handle.request_id, self.defer_after)
        return final

    def _queue_look(self, handle: QueueHandle) -> tuple[int | None, float | None]:
        """This process's last look at ``handle``'s job in the queue: its position and when (epoch seconds);
        (None, None) when there is none (not submitted here, or the job ran)."""
        look = self._last_look
        if look is None or look[0] != handle.request_id or look[1] is None:
            return None, None
        return look[1], look[2]

    def get_job_result(self, external_id: JsonValue, context: Context) -> dict[str, Any]:
        handle, _ = _stored(external_id)
        try:
            result = self._result or self.hook.result(handle)
        except FluxReduxResultExpiredError:
            if self._result is not None or self._handle is None or self._handle.request_id != handle.request_id:
                raise
            # A rerun found its finished job, but fal no longer keeps the result: this run needs a new job.
            self.log.warning("The result of finished request %s has expired; submitting anew.", handle.request_id)
            return self._submit_anew(context)
        return self._finish(context, handle, result, metrics=self._metrics, reference=input_reference(self.image_url))

    def _submit_anew(self, context: Context) -> dict[str, Any]:
        external_id = self.submit_job(context)
        store = context.get("task_state_store")  # type: ignore[call-overload]
        if store is not None:
            store.set(self.external_id_key, external_id)
        self.poll_until_complete(external_id, context)
        return self.get_job_result(external_id, context)

    # -- resuming from the trigger -------------------------------------------------------------------------

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume from the trigger's event (which carries everything: ``dags test`` drops defer kwargs).

        The input reference comes from the event too: a ``@task.flux_redux`` task's input is what its function
        returned in the try that deferred, and this fresh instance does not run the function again.
        """
        if not isinstance(event, dict) or "handle" not in event or "status" not in event:
            raise FluxReduxProtocolError(f"The trigger sent an event this operator does not understand: {event!r}")
        handle = QueueHandle.from_dict(event["handle"])
        self._handle = handle
        if event["status"] != "success":
            # The trigger's error, raised again as the same class with the same fields.
            raise error_from_dict(event.get("error") or {"message": event.get("message"), "fields": {}})
        payload = event.get("result")
        result = ReduxResult.model_validate(payload) if payload else self.hook.result(handle)
        reference = event.get("input") or input_reference(self.image_url)
        return self._finish(context, handle, result, metrics=event.get("metrics") or {}, reference=reference)

    def _finish(
        self, context: Context, handle: QueueHandle, result: ReduxResult, *, metrics: dict[str, Any], reference: str
    ) -> dict[str, Any]:
        """Save the images and build the XCom result; ``reference`` is the input as the result names it."""
        images: list[dict[str, Any]] = []
        for index, image in enumerate(result.images):
            saved = self._save(handle.request_id, index, image.url, reference)
            images.append(
                {
                    "url": None if image.url.startswith("data:") else image.url,
                    "width": image.width,
                    "height": image.height,
                    "content_type": image.content_type,
                    # ``path`` keeps output_path's form (file://..., s3://...); ``local_path`` is what open() and
                    # PIL.Image.open take, set only when the file is on a local filesystem.
                    "path": None if saved is None else str(saved),
                    "local_path": saved.path if saved is not None and saved.protocol in ("", "file") else None,
                }
            )
        output = {
            "request_id": handle.request_id,
            "input": reference,
            "images": images,
            "seed": result.seed,
            "has_nsfw_concepts": result.has_nsfw_concepts,
            "timings": result.timings,
            "metrics": metrics,
            "cost": result_cost(result),
        }
        first = images[0] if images else None
        first_link = first["url"] or first["path"] if first is not None else None
        if first_link:
            context["ti"].xcom_push(key=XCOM_IMAGE_URL, value=first_link)
            setattr(self, FIRST_IMAGE_ATTR, first_link)
        self._lineage = ([reference], [image["path"] or image["url"] for image in images])
        self.log.info(
            "Request %s done: %d image(s)%s",
            handle.request_id,
            len(images),
            f" saved under {self.output_path}" if self.output_path else "",
        )
        return output

    def _save(self, request_id: str, index: int, url: str, reference: str) -> ObjectStoragePath | None:
        """Stream one image to ``output_path`` under the name ``output_name`` makes (never the server's), if asked."""
        if not self.output_path:
            return None
        folder = ObjectStoragePath(str(self.output_path))
        folder.mkdir(parents=True, exist_ok=True)
        name = output_file_name(self.output_name, request_id=request_id, index=index, image_url=reference)
        if url.startswith("data:"):
            content_type, data = _decode_data_uri(url, self.max_image_bytes)
            target = folder / f"{name}.{_EXTENSIONS[content_type]}"
            with target.open("wb") as sink:
                sink.write(data)
            return target
        partial = folder / f"{name}.part"
        try:
            with partial.open("wb") as sink:
                download = self.hook.download(url, sink, max_bytes=self.max_image_bytes)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        target = folder / f"{name}.{_EXTENSIONS.get(download.content_type, 'bin')}"
        partial.rename(target)
        return target

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Input image to output images, for the OpenLineage provider when it is installed."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        inputs, outputs = self._lineage
        return OperatorLineage(
            inputs=[dataset for dataset in map(_lineage_dataset, inputs) if dataset is not None],
            outputs=[dataset for dataset in map(_lineage_dataset, outputs) if dataset is not None],
        )

    def on_kill(self) -> None:
        """Cancel the remote job when the worker kills the task mid-wait (non-deferrable mode)."""
        if self._handle is not None and self.cancel_on_kill:
            try:
                outcome = self.hook.cancel(self._handle)
            except FluxReduxError as err:
                self.log.warning("Could not cancel %s: %s", self._handle.request_id, err)
                return
            self.log.info("Cancelled fal request %s: %s", self._handle.request_id, outcome)


# Stands in for image_url (resolved only at run time: a file may exist only on the worker) at parse time.
_PARSE_TIME_URL = "https://parse-time.invalid/image.png"


def _validate_literals(fields: dict[str, Any]) -> None:
    """Raise ``validate_request``'s error for a literal request field the spec does not allow, at DAG parse time.

    Templated values (``{{``, XCom args) wait for the run, which validates the whole request after rendering.
    """
    literal = {name: value for name, value in fields.items() if _is_literal(value)}
    if literal:
        validate_request({"image_url": _PARSE_TIME_URL, **literal})


def _is_literal(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return "{{" not in value
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_literal(item) for key, item in value.items())
    return False


def _lineage_dataset(location: str | None) -> Any:
    """An OpenLineage dataset for a URL or storage path; inline data has no identity, so none."""
    from airflow.providers.common.compat.openlineage.facet import Dataset

    if not location or location.startswith("data:"):
        return None
    parts = urlsplit(location if "://" in location else f"file://{location}")
    namespace = f"{parts.scheme}://{parts.netloc}" if parts.netloc else parts.scheme
    return Dataset(namespace=namespace, name=parts.path)


def _not_before() -> float | None:
    """When the trigger may fire at the earliest: ``[flux_redux] defer_event_hold`` seconds from now (0: at once)."""
    hold = conf.getfloat("flux_redux", "defer_event_hold", fallback=DEFER_EVENT_HOLD)
    return time.time() + hold if hold > 0 else None


def _stored(external_id: Any) -> tuple[QueueHandle, float]:
    """The handle and the absolute deadline the state store keeps (what ``submit_job`` returned)."""
    data = external_id if isinstance(external_id, dict) else {}
    return QueueHandle.from_dict(data.get("handle")), float(data["deadline"])


def _decode_data_uri(url: str, max_bytes: int) -> tuple[str, bytes]:
    """An inline image (``sync_mode``), with the same type check and size cap as a download."""
    header, _, data = url.partition(",")
    content_type = header[5:].split(";")[0].strip().lower()
    if ";base64" not in header.lower() or content_type not in _EXTENSIONS:
        raise FluxReduxProtocolError(
            f"an image came back as a data URI of type {content_type or 'none'!r} (not base64 or not "
            f"one of {', '.join(_EXTENSIONS)}); not saved"
        )
    if len(data) * 3 // 4 > max_bytes:
        raise FluxReduxProtocolError(f"an inline image is over the cap of {max_bytes} bytes (max_image_bytes)")
    try:
        return content_type, base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FluxReduxProtocolError("an image came back as a data URI that is not valid base64") from None
