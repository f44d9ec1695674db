"""What FluxReduxOperator records about its output: file names, the input reference, cost.

Kept apart from the operator so the result's shape is read in one place (the gallery reads the same
fields back from XCom).
"""

from __future__ import annotations

import re
import string
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from airflow_flux_redux.exceptions import FluxReduxError

if TYPE_CHECKING:
    from airflow_flux_redux.models import ReduxResult

DEFAULT_OUTPUT_NAME = "{request_id}_{index}"
OUTPUT_NAME_FIELDS = ("request_id", "index", "input_stem")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 150


def check_output_name(pattern: str) -> str:
    """``pattern`` if it is a file-name pattern we can fill, else an error naming the allowed fields."""
    allowed = ", ".join(f"{{{name}}}" for name in OUTPUT_NAME_FIELDS)
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as err:
        raise FluxReduxError(f"output_name: {pattern!r} is not a valid pattern ({err}); fields: {allowed}") from None
    unknown = sorted(set(fields) - set(OUTPUT_NAME_FIELDS))
    if unknown:
        raise FluxReduxError(f"output_name: unknown field(s) {unknown} in {pattern!r}; allowed: {allowed}")
    if "index" not in fields:
        raise FluxReduxError(
            f"output_name: {pattern!r} must contain {{index}}, or a job's images (up to 4) overwrite each other"
        )
    return pattern


def input_stem(image_url: Any) -> str:
    """The input's file name without extension (``inline`` for a data: URI)."""
    text = str(image_url).strip()
    if text[:5].lower() == "data:":
        return "inline"
    path = unquote(urlsplit(text).path) if "://" in text else text
    return PurePosixPath(path).stem or "input"


def output_file_name(pattern: str, *, request_id: str, index: int, image_url: Any) -> str:
    """The file name (no extension) for one image: the pattern filled in, reduced to safe characters.

    No separator or leading dot survives, so a name never leaves the output folder or hides itself.
    """
    name = check_output_name(pattern).format(request_id=request_id, index=index, input_stem=input_stem(image_url))
    return _UNSAFE.sub("_", name).lstrip(".")[:_MAX_NAME] or f"image_{index}"


def input_reference(image_url: Any) -> str:
    """The input as the task was given it; a data: URI is shortened to its header (its bytes are no reference)."""
    text = str(image_url).strip()
    if text[:5].lower() == "data:":
        header = text.split(",", 1)[0]
        return f"{header},... ({len(text)} characters inline)"
    return text


def result_cost(result: ReduxResult) -> dict[str, float | None]:
    """What the provider can know about a job's cost: megapixels made, and fal's billable units when sent."""
    sizes = [image.width * image.height for image in result.images if image.width and image.height]
    return {"megapixels": round(sum(sizes) / 1e6, 6) if sizes else None, "billable_units": result.billable_units}
