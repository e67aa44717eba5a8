"""Activity type to stream: names, JSON schemas, and back again from a catalog entry.

Everything the record builder needs survives a catalog round trip in standard JSON-schema
keys: the activity type id is the single `enum` value of `activityTypeId`, and each
attribute column's `title` is the Marketo attribute display name it is read from.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

STREAM_PREFIX = "activities_"
DELETE_LEAD_TYPE_ID = 37  # not exportable by bulk extract
MERGE_LEADS_TYPE_ID = 32  # its rows also feed the merged_leads stream (merges.py)
MERGE_IDS = "Merge IDs"  # the leads merged away, written like "[1520655,1797020]"
KEY = "marketoGUID"
REPLICATION_KEY = "activityDate"
# The columns of a bulk activity export, in the order a job asks for them (and the state
# records them): every activity's base columns.
EXPORT_COLUMNS = ("marketoGUID", "leadId", "activityDate", "activityTypeId", "campaignId",
                  "primaryAttributeValueId", "primaryAttributeValue", "attributes",
                  "actionResult")

# Attributes Marketo types as one integer but writes as a list of ids: a string column
# holding the text as written, so that good data casts without a warning (merged_leads
# has the ids, one record each).
LIST_ATTRIBUTES = frozenset({(MERGE_LEADS_TYPE_ID, MERGE_IDS)})

# Marketo dataType -> (JSON type, JSON format). Anything else is read as a string.
DATA_TYPES: dict[str, tuple[str, str | None]] = {
    "string": ("string", None),
    "text": ("string", None),
    "email": ("string", None),
    "phone": ("string", None),
    "url": ("string", None),
    "link": ("string", None),
    "reference": ("string", None),
    "integer": ("integer", None),
    "score": ("integer", None),
    "float": ("number", None),
    "currency": ("number", None),
    "percent": ("number", None),
    "boolean": ("boolean", None),
    "date": ("string", "date"),
    "datetime": ("string", "date-time"),
}


def _nullable(json_type: str, fmt: str | None = None, **extra: Any) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": [json_type, "null"], **extra}
    if fmt:
        prop["format"] = fmt
    return prop


def base_properties(type_id: int) -> dict[str, dict[str, Any]]:
    """The JSON schema of each of EXPORT_COLUMNS, in the export file's own names."""
    return {
        "marketoGUID": {"type": ["string"]},
        "leadId": _nullable("integer"),
        "activityDate": {"type": ["string"], "format": "date-time"},
        "activityTypeId": {"type": ["integer"], "enum": [type_id]},
        "campaignId": _nullable("integer"),
        "primaryAttributeValueId": _nullable("string"),
        "primaryAttributeValue": _nullable("string"),
        "actionResult": _nullable("string", description="succeeded, skipped or failed"),
        "attributes": {"type": ["object", "null"], "additionalProperties": True},
    }


BASE_COLUMNS = frozenset(EXPORT_COLUMNS)
# In every record and every export: the key, the replication key, and the routing column.
ALWAYS_PRESENT = frozenset({KEY, REPLICATION_KEY, "activityTypeId"})
# Bulk export only (Get Lead Activities has no such field), so not selected unless a catalog
# asks for it: a stream that selects it cannot take REST increments.
BULK_ONLY_COLUMNS = frozenset({"actionResult"})


def snake_case(name: str) -> str:
    """'Webinar Attended (Zoom)' -> 'webinar_attended_zoom'; 'clientIP' -> 'client_ip'."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.strip())
    return re.sub(r"[^0-9a-zA-Z]+", "_", spaced).strip("_").lower() or "unnamed"


def json_type_of(data_type: str | None, where: str,
                 said: set[str | None]) -> tuple[str, str | None]:
    """The JSON type and format of a Marketo dataType; an unknown one is said once per
    `said` (the discovery's), not once per attribute."""
    known = DATA_TYPES.get((data_type or "").lower())
    if known is None:
        if data_type not in said:
            said.add(data_type)
            logger.info("Marketo dataType %r (first seen for %s) is not one the tap types: "
                        "its values are read as strings.", data_type, where)
        return ("string", None)
    return known


def stream_names(activity_types: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """Stream name per type id. On a clash the lowest id keeps the plain name, so that a
    type added later never renames an existing stream."""
    names: dict[int, str] = {}
    taken: set[str] = set()
    for item in sorted(activity_types, key=lambda t: int(t["id"])):
        type_id = int(item["id"])
        name = STREAM_PREFIX + snake_case(str(item.get("name") or type_id))
        if name in taken:
            name = f"{name}_{type_id}"
        taken.add(name)
        names[type_id] = name
    return names


def attribute_columns(attributes: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Column name per attribute display name, never clashing with a base column or
    with each other."""
    columns: dict[str, str] = {}
    taken = set(BASE_COLUMNS)
    for attribute in attributes:
        display = str(attribute.get("name", ""))
        if not display or display in columns:
            continue
        column = snake_case(display)
        if column in taken:
            column = f"attribute_{column}"
        suffix = 2
        candidate = column
        while candidate in taken:
            candidate = f"{column}_{suffix}"
            suffix += 1
        taken.add(candidate)
        columns[display] = candidate
    return columns


def activity_schema(activity_type: Mapping[str, Any],
                    said: set[str | None] | None = None) -> dict[str, Any]:
    """The JSON schema of one activity type's stream; `said`: the unknown dataTypes
    already logged by this discovery."""
    said = set() if said is None else said
    type_id = int(activity_type["id"])
    label = f"activity type {type_id} ({activity_type.get('name')})"
    properties = base_properties(type_id)
    primary = activity_type.get("primaryAttribute") or {}
    if primary:
        json_type, fmt = json_type_of(primary.get("dataType"), f"primary attribute of {label}",
                                     said)
        properties["primaryAttributeValueId"] = _nullable(
            json_type, fmt, description=f"Marketo primary attribute: {primary.get('name')}"
        )
    attributes = activity_type.get("attributes") or []
    data_types = {str(a.get("name", "")): a.get("dataType") for a in attributes}
    for display, column in attribute_columns(attributes).items():
        data_type = "string" if (type_id, display) in LIST_ATTRIBUTES else data_types[display]
        json_type, fmt = json_type_of(data_type, f"attribute {display!r} of {label}", said)
        properties[column] = _nullable(json_type, fmt, title=display)
    return {"type": "object", "properties": properties, "additionalProperties": False}


@dataclass(frozen=True)
class ColumnSpec:
    """Where a typed column comes from and what it is cast to."""

    column: str
    source: str  # the attribute display name inside `attributes`
    json_type: str
    fmt: str | None


def _first_type(prop: Mapping[str, Any]) -> str:
    types = prop.get("type", "string")
    if isinstance(types, str):
        return types
    return next((t for t in types if t != "null"), "string")


def type_id_of(schema: Mapping[str, Any]) -> int:
    """The activity type id a stream schema was built for (see module docstring)."""
    return int(schema["properties"]["activityTypeId"]["enum"][0])


def attribute_specs(schema: Mapping[str, Any]) -> list[ColumnSpec]:
    """The attribute columns of a stream schema, read back from their `title`."""
    specs = []
    for column, prop in schema["properties"].items():
        if column in BASE_COLUMNS or "title" not in prop:
            continue
        specs.append(ColumnSpec(column, prop["title"], _first_type(prop), prop.get("format")))
    return specs


def primary_spec(schema: Mapping[str, Any]) -> ColumnSpec:
    prop = schema["properties"]["primaryAttributeValueId"]
    return ColumnSpec("primaryAttributeValueId", "", _first_type(prop), prop.get("format"))
