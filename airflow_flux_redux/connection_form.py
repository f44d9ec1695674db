"""The ``flux_redux`` connection form for Airflow 3's UI (provider info) and Airflow 2's, from one table.

The extras come from ``connection_extras.EXTRAS``. Kept free of heavy imports: Airflow reads provider
info on every CLI start.
"""

from __future__ import annotations

from typing import Any

from airflow_flux_redux.connection_extras import EXTRAS, Extra

HIDDEN_FIELDS = ["schema", "login", "port"]
RELABELING = {"host": "Base URL", "password": "API key"}
PLACEHOLDERS = {
    "host": "empty for fal.ai, or your gateway's base URL",
    "password": "fal key (key_id:key_secret) or your gateway's key",
}


def conn_fields() -> dict[str, Any]:
    """``conn-fields`` for provider info (Airflow 3's UI)."""
    return {extra.name: {"label": extra.label, "description": extra.help, "schema": _schema(extra)} for extra in EXTRAS}


def _schema(extra: Extra) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": [extra.kind, "null"]}
    if extra.default not in (None, ""):
        schema["default"] = extra.default
    if extra.choices:
        schema["enum"] = list(extra.choices)
    if extra.minimum is not None:
        schema["minimum"] = extra.minimum
    return schema


def ui_field_behaviour() -> dict[str, Any]:
    """``ui-field-behaviour`` for provider info."""
    return {"hidden-fields": HIDDEN_FIELDS, "relabeling": RELABELING, "placeholders": PLACEHOLDERS}


def form_widgets() -> dict[str, Any]:
    """WTForms widgets for Airflow 2's connection form (Flask AppBuilder is only there)."""
    from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
    from flask_babel import lazy_gettext
    from wtforms import BooleanField, IntegerField, StringField

    widgets: dict[str, Any] = {}
    for extra in EXTRAS:
        label = lazy_gettext(extra.label)
        if extra.choices:
            # Airflow 2 drops a hook whose form has any field other than String/Integer/Boolean/Password.
            description = f"{extra.help} One of: {', '.join(extra.choices)}."
            widgets[extra.name] = StringField(label, widget=BS3TextFieldWidget(), description=description)
        elif extra.kind == "integer":
            widgets[extra.name] = IntegerField(label, widget=BS3TextFieldWidget(), description=extra.help)
        elif extra.kind == "boolean":
            widgets[extra.name] = BooleanField(label, description=extra.help)
        else:
            widgets[extra.name] = StringField(label, widget=BS3TextFieldWidget(), description=extra.help)
    return widgets
