"""Merged leads: one record per lead merged away, from the Merge Leads activities (type 32).

When Marketo merges leads it keeps one and records a Merge Leads activity on it, whose
`Merge IDs` attribute lists the leads merged into it. Activities exported before the merge
keep the merged-away `leadId`; the `merged_leads` stream is the table a warehouse joins
them through to the lead kept.

Its records come from the rows that every other stream reads: type 32 joins the window's
export job (or Get Lead Activities read) with the few columns merged_leads needs, and each
Merge Leads row goes, unchanged, to activities_merge_leads when that stream is selected and,
fanned out, to merged_leads. No job or read of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from singer_sdk import Tap
from typing_extensions import override

from tap_marketo_activities.delivery import Rows
from tap_marketo_activities.records import Problems, RecordBuilder
from tap_marketo_activities.schema import (
    KEY,
    MERGE_IDS,
    MERGE_LEADS_TYPE_ID,
    REPLICATION_KEY,
    base_properties,
)
from tap_marketo_activities.streams import ActivityStream

MERGED_LEADS = "merged_leads"
MERGED_LEAD_ID = "mergedLeadId"
KEPT_LEAD_ID = "leadId"
# The export columns a Merge Leads row must bring for merged_leads.
MERGE_FIELDS = frozenset({KEY, REPLICATION_KEY, "activityTypeId", KEPT_LEAD_ID, "attributes"})
# Problem kinds (records.Problems): the activity stays whole, nothing is invented.
NOT_A_LIST = f"{MERGE_IDS} is not a list of lead ids: no merged_leads record for it"
NO_KEPT_LEAD = "Merge Leads activity without leadId: no merged_leads record for it"

# "[1,2]", "1,2", "1", with or without spaces; brackets both or neither.
_IDS = re.compile(r"\s*(\[?)\s*([0-9]+(?:\s*,\s*[0-9]+)*)\s*(\]?)\s*", re.ASCII)


def parse_merge_ids(value: Any) -> list[int] | None:
    """The lead ids of a `Merge IDs` value, each once, or None when it is not a list of
    integers (text as Marketo writes it, one JSON integer, or a JSON list of them)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        ids = [value]
    elif isinstance(value, list):
        if not value or not all(type(v) is int for v in value):
            return None
        ids = value
    elif isinstance(value, str):
        match = _IDS.fullmatch(value)
        if match is None or bool(match[1]) != bool(match[3]):
            return None
        ids = [int(part) for part in match[2].split(",")]
    else:
        return None
    if any(lead <= 0 for lead in ids):
        return None
    return list(dict.fromkeys(ids))


def merged_leads_schema() -> dict[str, Any]:
    base = base_properties(MERGE_LEADS_TYPE_ID)
    return {
        "type": "object",
        "properties": {
            KEY: base[KEY],
            REPLICATION_KEY: base[REPLICATION_KEY],
            KEPT_LEAD_ID: {"type": ["integer"], "description": "The lead kept"},
            MERGED_LEAD_ID: {"type": ["integer"], "description": "A lead merged into it"},
        },
        "additionalProperties": False,
    }


class MergedLeadsStream(ActivityStream):
    """One record per (Merge Leads activity, lead merged away)."""

    primary_keys = (KEY, MERGED_LEAD_ID)
    derived = True

    def __init__(self, tap: Tap, name: str = MERGED_LEADS,
                 schema: dict[str, Any] | None = None) -> None:
        super().__init__(tap, name, schema or merged_leads_schema(), MERGE_LEADS_TYPE_ID)

    @override
    def export_fields(self) -> set[str]:
        return set(MERGE_FIELDS)

    @override
    def builder(self) -> RecordBuilder:
        """Reads a Merge Leads row into the columns the fan-out needs."""
        schema = {"properties": base_properties(MERGE_LEADS_TYPE_ID)}
        return RecordBuilder(self.name, schema, set(MERGE_FIELDS))


class Routes:
    """For one read: the builder of each type's rows, the stream each builder's records go
    to, and the Merge Leads fan-out when merged_leads is among the streams."""

    def __init__(self, streams: Iterable[ActivityStream], problems: Problems) -> None:
        self.builders: dict[int, RecordBuilder] = {}
        self.streams: dict[RecordBuilder, ActivityStream] = {}
        merged: MergedLeadsStream | None = None
        for stream in streams:
            if isinstance(stream, MergedLeadsStream):
                merged = stream
                continue
            builder = self.builders[stream.type_id] = stream.builder()
            self.streams[builder] = stream
        self.fan_out = FanOut(merged, self, problems) if merged else None

    def rows(self, rows: Rows) -> Rows:
        return rows if self.fan_out is None else self.fan_out.rows(rows)


class FanOut:
    """Merge Leads rows read once: to activities_merge_leads as its own builder makes them,
    and to merged_leads one record per lead merged away."""

    def __init__(self, merged: MergedLeadsStream, routes: Routes, problems: Problems) -> None:
        self.problems = problems
        self.merged_key = merged.builder()  # only a key of routes.streams
        routes.streams[self.merged_key] = merged
        self.merged_columns = merged.selected_columns()
        self.activity_key = routes.builders.get(MERGE_LEADS_TYPE_ID)
        self.extra: frozenset[str] = frozenset()  # read for merged_leads only
        if self.activity_key is None:
            self.reader = merged.builder()
        else:
            activities = routes.streams[self.activity_key]
            selected = activities.selected_columns()
            self.reader = RecordBuilder(activities.name, activities.schema,
                                        selected | MERGE_FIELDS)
            self.extra = MERGE_FIELDS - selected
        routes.builders[MERGE_LEADS_TYPE_ID] = self.reader

    def rows(self, rows: Rows) -> Iterator[tuple[RecordBuilder, dict[str, Any]]]:
        reader, activity_key, merged_key = self.reader, self.activity_key, self.merged_key
        for builder, record in rows:
            if builder is not reader:
                yield builder, record
                continue
            merged = self.merged_records(record)
            if activity_key is not None:
                for column in self.extra:
                    record.pop(column, None)
                yield activity_key, record
            for item in merged:
                yield merged_key, item

    def merged_records(self, activity: dict[str, Any]) -> list[dict[str, Any]]:
        attributes = activity.get("attributes")
        value = attributes.get(MERGE_IDS) if isinstance(attributes, dict) else None
        ids = parse_merge_ids(value)
        kept = activity.get(KEPT_LEAD_ID)
        guid = activity[KEY]
        if ids is None:
            self.problems.report(NOT_A_LIST, self.problems.rows,
                                 f"marketoGUID {guid}: {str(value)[:80]!r}")
            return []
        if kept is None:
            self.problems.report(NO_KEPT_LEAD, self.problems.rows, f"marketoGUID {guid}")
            return []
        records = [{KEY: guid, REPLICATION_KEY: activity[REPLICATION_KEY], KEPT_LEAD_ID: kept,
                    MERGED_LEAD_ID: lead} for lead in ids]
        columns = self.merged_columns
        if len(columns) < len(records[0]):  # deselected columns are not written
            records = [{k: v for k, v in r.items() if k in columns} for r in records]
        return records
