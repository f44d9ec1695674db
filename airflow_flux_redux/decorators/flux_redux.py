"""``@task.flux_redux``: a TaskFlow function computes the request, FluxReduxOperator runs it.

The function runs in the worker and returns the input image (an http(s) URL, ``data:`` URI, local path or
``ObjectStoragePath``) or a dict of request fields; everything after that is FluxReduxOperator's own code:
validation, at-most-once submit, the in-worker window, deferral, saving, links and the XCom result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, cast

from airflow.providers.common.compat.sdk import (
    SET_DURING_EXECUTION,
    DecoratedOperator,
    ObjectStoragePath,
    TaskDecorator,
    context_merge,
    determine_kwargs,
    task_decorator_factory,
)

from airflow_flux_redux.exceptions import InvalidRequestError
from airflow_flux_redux.models import FluxReduxRequest
from airflow_flux_redux.operators.flux_redux import FluxReduxOperator
from airflow_flux_redux.version_compat import DECORATED_OPERATOR_READS_XCOM_PUSH

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: The keys a returned dict may have: the request's fields, nothing else.
REQUEST_FIELDS: tuple[str, ...] = tuple(FluxReduxRequest.model_fields)
_INPUT_KINDS = "an http(s) URL, a data: URI, a local path or file:// URI, or an ObjectStoragePath"


class _FluxReduxDecoratedOperator(DecoratedOperator, FluxReduxOperator):
    """Run the decorated function, then submit what it returned as a FLUX.1 [schnell] Redux request.

    Decorator arguments are FluxReduxOperator's arguments (``output_path``, ``output_name``, ``defer_after``,
    request fields as defaults, ...), except ``image_url``, which the function returns. A returned dict's fields
    take precedence over the decorator's. The return value is used as it is (not rendered as a template).

    :param python_callable: The function that returns the input image or a dict of request fields.
    :param op_args: Positional arguments for the function. (templated)
    :param op_kwargs: Keyword arguments for the function. (templated)
    """

    template_fields = (*DecoratedOperator.template_fields, *FluxReduxOperator.template_fields)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **FluxReduxOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.flux_redux"

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if "image_url" in kwargs:
            raise TypeError(
                "@task.flux_redux takes no image_url argument: the decorated function returns the input image "
                "(or a dict with image_url and other request fields)"
            )
        super().__init__(
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            image_url=cast("str", SET_DURING_EXECUTION),
            **kwargs,
        )

    def execute(self, context: Context) -> Any:
        context_merge(context, self.op_kwargs)
        kwargs = determine_kwargs(self.python_callable, self.op_args, context)
        for name, value in request_fields(self.python_callable(*self.op_args, **kwargs)).items():
            setattr(self, name, value)
        # Airflow 3 then records the rendered fields again when this try ends or defers: the task shows what the
        # function returned, not the placeholder. Not on a resumed instance (the class default stays False): it never
        # ran the function, and Airflow has already rendered its fields, placeholder included, when it resumed.
        self.overwrite_rtif_after_execution = True
        # DecoratedOperator.execute, then FluxReduxOperator.execute, which validates before any network call.
        return super().execute(context)

    if DECORATED_OPERATOR_READS_XCOM_PUSH:

        def xcom_push(self, context: Context, key: str, value: Any) -> None:
            """Airflow 3.0's ``DecoratedOperator.execute`` looks this up (``version_compat``); it pushes as the task."""
            context["ti"].xcom_push(key=key, value=value)


def request_fields(returned: Any) -> dict[str, Any]:
    """The request fields a decorated function's return value gives, or ``InvalidRequestError`` naming what is wrong.

    Only the shape is checked here; the values are checked by ``FluxReduxOperator.build_request``, with the
    operator's own messages.
    """
    if isinstance(returned, Mapping):
        fields = dict(returned)
        unknown = [key for key in fields if key not in REQUEST_FIELDS]
        if unknown:
            raise InvalidRequestError(
                [
                    f"{key!s}: unknown field in the dict the @task.flux_redux function returned; allowed: "
                    f"{', '.join(REQUEST_FIELDS)} (output_path, output_name and the other operator arguments "
                    "go to the decorator)"
                    for key in unknown
                ]
            )
        if "image_url" not in fields:
            raise InvalidRequestError(
                [f"image_url: missing from the dict the @task.flux_redux function returned; give {_INPUT_KINDS}"]
            )
    else:
        fields = {"image_url": returned}
    fields["image_url"] = _input_image(fields["image_url"])
    return fields


def _input_image(value: Any) -> str | ObjectStoragePath:
    """The input as FluxReduxOperator takes it: a string or an ``ObjectStoragePath`` (a ``pathlib`` path as text)."""
    if isinstance(value, str | ObjectStoragePath):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # type: ignore[return-value]
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise InvalidRequestError(
        [
            f"image_url: got {shown} ({type(value).__name__}) from the @task.flux_redux function; allowed: "
            f"{_INPUT_KINDS}, or a dict of request fields ({', '.join(REQUEST_FIELDS)})"
        ]
    )


def flux_redux_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """Wrap a function into a FluxReduxOperator task: ``@task.flux_redux(output_path=...)``.

    The function returns the input image (URL, ``data:`` URI, path or ``ObjectStoragePath``) or a dict of request
    fields (``image_url``, ``image_size``, ``seed``, ``num_images``, ...); the task's XCom result is the operator's.
    Keyword arguments are FluxReduxOperator's (all but ``image_url``) and BaseOperator's.

    :param python_callable: The function to wrap.
    """
    # The task's XCom is the operator's result dict; a ``-> dict`` annotation on the function describes the
    # request, and must not split that result into one XCom per key.
    kwargs.setdefault("multiple_outputs", False)
    return task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=_FluxReduxDecoratedOperator,
        **kwargs,
    )
