"""The ``flux_redux`` connection form, written once for Airflow 3's UI (provider info) and Airflow 2's.

Kept free of heavy imports: Airflow reads provider info on every CLI start.
"""

from __future__ import annotations

from typing import Any

HIDDEN_FIELDS = ["schema", "login", "port"]
RELABELING = {"host": "Base URL", "password": "API key"}
PLACEHOLDERS = {
    "host": "empty for fal.ai, or your gateway's base URL",
    "password": "fal key (key_id:key_secret) or your gateway's key",
}

# name -> (label, JSON type, description, extra schema)
EXTRA_FIELDS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "auth_scheme": (
        "Auth scheme",
        "string",
        "Key for fal.ai; Bearer for most fal-compatible gateways.",
        {"default": "Key", "enum": ["Key", "Bearer"]},
    ),
    "endpoint": (
        "Model endpoint",
        "string",
        "Path of the model under the base URL.",
        {"default": "fal-ai/flux-1/schnell/redux"},
    ),
    "timeout": ("HTTP timeout (s)", "number", "Per HTTP call, not the whole job.", {"default": 30}),
    "max_retries": (
        "Max retries",
        "integer",
        "Retries of a transient failure (429, 502, 503, 504, network) per call.",
        {"default": 5},
    ),
    "allowed_hosts": (
        "Allowed hosts",
        "string",
        "Comma-separated origins (https://host:port) that may receive the key besides the base URL, "
        "for gateways that answer with status URLs on another host.",
        {},
    ),
    "queue_priority": (
        "Queue priority",
        "string",
        "fal queue priority (X-Fal-Queue-Priority).",
        {"enum": ["normal", "low"]},
    ),
    "request_timeout": (
        "Start deadline (s)",
        "integer",
        "fal gives up on a job not started within this many seconds (X-Fal-Request-Timeout).",
        {},
    ),
}


def conn_fields() -> dict[str, Any]:
    """``conn-fields`` for provider info (Airflow 3's UI)."""
    return {
        name: {"label": label, "description": text, "schema": {"type": [kind, "null"], **schema}}
        for name, (label, kind, text, schema) in EXTRA_FIELDS.items()
    }


def ui_field_behaviour() -> dict[str, Any]:
    """``ui-field-behaviour`` for provider info."""
    return {"hidden-fields": HIDDEN_FIELDS, "relabeling": RELABELING, "placeholders": PLACEHOLDERS}


def form_widgets() -> dict[str, Any]:
    """WTForms widgets for Airflow 2's connection form (Flask AppBuilder is only there)."""
    from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
    from flask_babel import lazy_gettext
    from wtforms import IntegerField, StringField

    widgets: dict[str, Any] = {}
    for name, (label, kind, text, schema) in EXTRA_FIELDS.items():
        if "enum" in schema:
            # Airflow 2 drops a hook whose form has any field other than String/Integer/Boolean/Password.
            choices = ", ".join(map(str, schema["enum"]))
            description = f"{text} One of: {choices}."
            widgets[name] = StringField(lazy_gettext(label), widget=BS3TextFieldWidget(), description=description)
        elif kind == "integer":
            widgets[name] = IntegerField(lazy_gettext(label), widget=BS3TextFieldWidget(), description=text)
        else:
            widgets[name] = StringField(lazy_gettext(label), widget=BS3TextFieldWidget(), description=text)
    return widgets
