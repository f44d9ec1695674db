"""The wire format of the fal queue and of FLUX.1 [schnell] Redux, written once.

Every request is validated here before any network call; every response is parsed here.
The hook, the trigger, the operator and the emulator all use these models.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from airflow_flux_redux.exceptions import InvalidRequestError

IMAGE_SIZE_PRESETS: tuple[str, ...] = (
    "square_hd",
    "square",
    "portrait_4_3",
    "portrait_16_9",
    "landscape_4_3",
    "landscape_16_9",
)
MAX_SIDE = 14142
ImageSizePreset = Literal["square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
OutputFormat = Literal["jpeg", "png"]
Acceleration = Literal["none", "regular", "high"]

# What each field accepts, in words a user can act on; used in every validation message.
ALLOWED: dict[str, str] = {
    "image_url": "an http(s) URL or a data: URI",
    "image_size": f"one of {', '.join(IMAGE_SIZE_PRESETS)}, or {{width, height}} each 1..{MAX_SIDE}",
    "image_size.width": f"an integer 1..{MAX_SIDE}",
    "image_size.height": f"an integer 1..{MAX_SIDE}",
    "num_inference_steps": "an integer 1..12 (default 4)",
    "seed": "an integer or null",
    "sync_mode": "true or false (default false)",
    "num_images": "an integer 1..4 (default 1)",
    "enable_safety_checker": "true or false (default true)",
    "output_format": "jpeg or png",
    "acceleration": "none, regular or high",
}


class QueueState(StrEnum):
    """The only three states the fal queue reports; a failed job is COMPLETED with an error."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class ImageSize(BaseModel):
    """An explicit output size in pixels."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(ge=1, le=MAX_SIDE)
    height: int = Field(ge=1, le=MAX_SIDE)


class FluxReduxRequest(BaseModel):
    """The input of ``fal-ai/flux-1/schnell/redux``: every field of the spec, with its limits."""

    model_config = ConfigDict(extra="forbid")

    image_url: str
    image_size: ImageSizePreset | ImageSize | None = None
    num_inference_steps: int = Field(default=4, ge=1, le=12)
    seed: int | None = None
    sync_mode: bool = False
    num_images: int = Field(default=1, ge=1, le=4)
    enable_safety_checker: bool = True
    output_format: OutputFormat | None = None
    acceleration: Acceleration | None = None

    @field_validator("image_url")
    @classmethod
    def _url_or_data_uri(cls, value: str) -> str:
        lowered = value[:8].lower()
        if lowered.startswith(("http://", "https://")) and len(value) > len("https://"):
            return value
        if lowered.startswith("data:") and "," in value:
            return value
        raise ValueError("must be an http(s) URL or a data: URI")

    def to_payload(self) -> dict[str, Any]:
        """The JSON body to submit: unset optional fields are left to the server's defaults."""
        return self.model_dump(mode="json", exclude_none=True)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _field_name(loc: tuple[int | str, ...]) -> str:
    # pydantic puts the union branch into loc ("image_size", "ImageSize", "width"); users know no branches.
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p[:1].isupper() or p.startswith("literal[")))]
    return ".".join(parts) or "request"


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per bad field: its name, the value given, and what is allowed."""
    problems: dict[str, str] = {}
    for item in error.errors():
        field = _field_name(tuple(item["loc"]))
        if item["type"] == "extra_forbidden":
            known = ", ".join(FluxReduxRequest.model_fields)
            problems[field] = f"{field}: unknown field; the fields are: {known}"
            continue
        if item["type"] == "missing":
            problems[field] = f"{field}: required; give {ALLOWED.get(field, 'a value')}"
            continue
        if field in problems:
            continue
        top = field.split(".")[0]
        allowed = ALLOWED.get(field) or ALLOWED.get(top, item["msg"])
        value = item.get("input")
        if field == "image_size" and isinstance(value, dict):
            # The preset branch's complaint about a dict is noise: the width/height lines say what is wrong.
            continue
        problems[field] = f"{field}: got {_short(value)}; allowed: {allowed}"
    return list(problems.values())


def validate_request(data: FluxReduxRequest | dict[str, Any]) -> FluxReduxRequest:
    """Validate user input into a request, or raise :class:`InvalidRequestError` naming each bad field."""
    if isinstance(data, FluxReduxRequest):
        return data
    try:
        return FluxReduxRequest.model_validate(data)
    except ValidationError as err:
        raise InvalidRequestError(describe_validation_error(err)) from None


class _Response(BaseModel):
    # Servers add fields over time; a response model keeps what it knows and ignores the rest.
    model_config = ConfigDict(extra="ignore")


class QueueHandle(_Response):
    """What submit returns: the request id and the URLs to follow (never rebuilt by us)."""

    request_id: str = Field(min_length=1)
    status_url: str
    response_url: str
    cancel_url: str
    status: QueueState = QueueState.IN_QUEUE
    queue_position: int | None = None

    def to_dict(self) -> dict[str, str]:
        """The one shape a handle crosses boundaries in (trigger kwargs and events, the state store, XCom)."""
        return {name: getattr(self, name) for name in HANDLE_FIELDS}

    @classmethod
    def from_dict(cls, data: Any) -> QueueHandle:
        if not isinstance(data, dict):
            raise TypeError(f"a queue handle is a dict with {', '.join(HANDLE_FIELDS)}, not {type(data).__name__}")
        return cls.model_validate({name: data.get(name) for name in HANDLE_FIELDS})


HANDLE_FIELDS = ("request_id", "status_url", "response_url", "cancel_url")


class LogEntry(_Response):
    message: str
    level: str | None = None
    source: str | None = None
    timestamp: str | None = None


class QueueStatus(_Response):
    """A status answer: one of three states, with queue position, logs, metrics and any error."""

    status: QueueState
    request_id: str | None = None
    queue_position: int | None = None
    logs: list[LogEntry] | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    response_url: str | None = None

    @field_validator("metrics", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @property
    def failed(self) -> bool:
        return self.status is QueueState.COMPLETED and (self.error is not None or self.error_type is not None)


class ImageOutput(_Response):
    url: str
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None


class ReduxResult(_Response):
    """The model's output."""

    images: list[ImageOutput]
    timings: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    has_nsfw_concepts: list[bool] = Field(default_factory=list)
    prompt: str | None = None
    # Not in the body: the hook fills it from the result answer's X-Fal-Billable-Units header, where sent.
    billable_units: float | None = None


class ErrorDetail(_Response):
    """One entry of a model error's ``detail`` list (``{loc, msg, type}``)."""

    msg: str = ""
    type: str = ""
    loc: list[Any] = Field(default_factory=list)


def _error_detail(entry: Any) -> ErrorDetail:
    """One ``detail`` entry, whatever a gateway put there: never an exception while reading an error."""
    if isinstance(entry, dict):
        try:
            return ErrorDetail.model_validate(entry)
        except ValidationError:
            pass
    return ErrorDetail(msg=str(entry)[:200])


def parse_error_body(body: Any) -> tuple[str | None, str]:
    """(error type, message) from either of fal's error shapes: a ``detail`` list or a flat detail."""
    if not isinstance(body, dict):
        return None, str(body)[:500] if body else ""
    detail = body.get("detail")
    error_type = body.get("error_type")
    if isinstance(detail, list) and detail:
        entries = [_error_detail(entry) for entry in detail]
        first_type = next((e.type for e in entries if e.type), None)
        return error_type or first_type, "; ".join(e.msg or e.type for e in entries)
    if detail is not None:
        return error_type, str(detail)
    return error_type, str(body)[:500]
