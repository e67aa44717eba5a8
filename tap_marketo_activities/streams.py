"""Streams and state: one stream per activity type, and what each stream has covered.

A stream does not fetch anything itself: the one pass (`sync.py`) feeds it the records of
every source (export files, REST pages) one at a time through the SDK's own record loop
(`delivery.py`), so stream maps, flattening, BATCH, record counts and `--test`'s record
limit work as for any SDK stream.

A stream's state holds the window edges it has covered: `replication_key_value`, the newest
(everything before it is delivered, from `start_date` or from `covered_from`), and, once a
backfill has gone newest first, `covered_from`, the oldest.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import Any

from singer_sdk import Stream, Tap
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.mapper import RemoveRecordTransform, SameRecordTransform
from singer_sdk.singerlib import MetadataMapping
from typing_extensions import override

from tap_marketo_activities.instants import isoformat
from tap_marketo_activities.output import RecordBufferingWriter, RecordFraming
from tap_marketo_activities.records import RecordBuilder
from tap_marketo_activities.schema import (
    ALWAYS_PRESENT,
    BASE_COLUMNS,
    BULK_ONLY_COLUMNS,
    KEY,
    REPLICATION_KEY,
    type_id_of,
)
from tap_marketo_activities.settings import Settings, parse_instant

logger = logging.getLogger(__name__)

LOW_EDGE = "covered_from"  # the oldest instant a newest-first backfill has reached
SETTLED = "settled"  # nothing before it can still arrive late (lookback.py)


class ActivityStream(Stream):
    """The activities of one Marketo activity type."""

    primary_keys: tuple[str, ...] = (KEY,)
    bulk = True  # served by the shared bulk export jobs
    derived = False  # records made from another type's rows (merges.MergedLeadsStream)
    replication_key = REPLICATION_KEY
    is_sorted = False  # rows of an export file come in no particular order
    # The tap casts every value from the activity type's dataTypes (records.py), so the
    # SDK's conformance pass would only cost time.
    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE

    def __init__(self, tap: Tap, name: str, schema: dict[str, Any],
                 type_id: int | None = None) -> None:
        super().__init__(tap, schema=schema, name=name)
        self.tap_of_stream = tap  # the message writer's owner (not Stream._tap: SDK-private)
        self.type_id = type_id_of(schema) if type_id is None else type_id
        self.windows_done = 0  # export windows delivered
        self.rest_reads = 0  # Get Lead Activities reads delivered whole
        self.records_written = 0
        self.fed: dict[str, Any] | None = None  # the record the one pass hands over next
        self.extracted_at = dt.datetime.now(dt.timezone.utc)

    @override
    def generate_child_contexts(self, record: dict, context: Any) -> Iterable[Any]:
        return ()  # no child streams: spare the SDK a copy of every record

    @cached_property
    def plain_output(self) -> bool:
        """No stream map and no flattening: records go out as built."""
        maps = self.stream_maps
        return len(maps) == 1 and type(maps[0]) is SameRecordTransform and \
            not maps[0].flattening_enabled

    @override
    def _write_record_message(self, record: dict) -> None:
        # The SDK's path copies each record to drop deselected fields, builds a message
        # object and stamps it with the clock; RecordBuilder already built only the
        # selected fields, and one extraction time per window is as true. Stream maps and
        # flattening take the SDK's path.
        writer = self.tap_of_stream.message_writer
        if not self.plain_output or not isinstance(writer, RecordBufferingWriter):
            super()._write_record_message(record)
            return
        writer.write_record(self.framing, record)

    @property
    def extracted_at(self) -> dt.datetime:
        return self._extracted_at

    @extracted_at.setter
    def extracted_at(self, moment: dt.datetime) -> None:
        self._extracted_at = moment
        self.framing = RecordFraming(self.name, moment)

    @override
    @property
    def metadata(self) -> MetadataMapping:
        """The SDK's, with the bulk-only columns not selected by default (schema.py)."""
        mapping = super().metadata
        for column in BULK_ONLY_COLUMNS:
            entry = mapping.get(("properties", column))
            if entry is not None and entry.selected is None and \
                    entry.selected_by_default is None:
                entry.selected_by_default = False
        return mapping

    @property
    def wanted(self) -> bool:
        """Selected, and not dropped by a stream map: worth export quota."""
        return self.selected and not all(
            isinstance(m, RemoveRecordTransform) for m in self.stream_maps)

    def selected_columns(self) -> set[str]:
        return {name for name in self.schema["properties"]
                if self.mask.get(("properties", name), True)}

    def export_fields(self) -> set[str]:
        """The export columns this stream's selected fields need."""
        selected = self.selected_columns()
        fields = {c for c in selected if c in BASE_COLUMNS} | ALWAYS_PRESENT
        if selected - BASE_COLUMNS:
            fields.add("attributes")  # typed attribute columns are read from it
        return fields

    def builder(self) -> RecordBuilder:
        return RecordBuilder(self.name, self.schema, self.selected_columns())

    # -- what is covered ------------------------------------------------------------------

    def high_edge(self) -> dt.datetime | None:
        """The newest instant delivered up to (the bookmark), or None."""
        value = self.stream_state.get("replication_key_value")
        return parse_instant("bookmark", value) if value else None

    def low_edge(self, start: dt.datetime) -> dt.datetime | None:
        """The oldest instant delivered from, or None when nothing is."""
        value = self.stream_state.get(LOW_EDGE)
        if value:
            return max(start, parse_instant("bookmark", value))
        return start if self.high_edge() else None

    def start_instant(self, settings: Settings) -> dt.datetime:
        """Where this stream resumes going forward: its bookmark, or start_date."""
        high = self.high_edge()
        return settings.start if high is None else max(settings.start, high)

    def covered(self, lower: dt.datetime, upper: dt.datetime, *, backward: bool = False
                ) -> None:
        """Every record of [lower, upper) is written: widen what the state says is done.
        Forward windows move the bookmark up; backward ones move `covered_from` down."""
        state = self.stream_state
        state["replication_key"] = REPLICATION_KEY
        if backward:
            low = state.get(LOW_EDGE)
            state[LOW_EDGE] = min(low, isoformat(lower)) if low else isoformat(lower)
            state.setdefault("replication_key_value", isoformat(upper))
        else:
            self.reached(isoformat(upper))

    def reached(self, upper: str) -> None:
        """Every record before `upper` is written (a REST read's progress)."""
        state = self.stream_state
        state["replication_key"] = REPLICATION_KEY
        high = state.get("replication_key_value")
        state["replication_key_value"] = max(high, upper) if high else upper

    @override
    def get_records(self, context: Mapping[str, Any] | None) -> Iterable[dict[str, Any]]:
        """The records the one pass feeds, one per resumption (sync.StreamFeed)."""
        while (record := self.fed) is not None:
            yield record

    @override
    def _write_state_message(self) -> None:
        """The one pass writes every STATE, one per window for all the streams it served;
        the SDK's own (every 10,000 records, at a stream's end, when --test's record limit
        aborts it) would only repeat it, or speak for --test."""

    @override
    def _write_starting_replication_value(self, context: Any) -> None:
        """The SDK logs 'Starting incremental sync ... with bookmark value' when the record
        loop starts, which in the one pass is after earlier windows moved the bookmark: the
        one pass logs where each stream resumes instead (sync.OnePass._log_resume), and
        nothing reads the SDK's `starting_replication_value`."""

    @override
    def _increment_stream_state(self, latest_record: dict, *, context: Any = None) -> None:
        """Bookmarks move per finished window (`covered`), never per record: rows of one
        file are unsorted, so a record's date says nothing of what is complete."""


class DeletedLeadStream(ActivityStream):
    """Type 37, Delete Lead: not exportable in bulk; the one pass reads Get Deleted Leads
    for it (sync.OnePass), through the same record path."""

    bulk = False
