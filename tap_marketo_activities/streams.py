"""Streams and state: one stream per activity type, fed from export files shared by window.

The SDK syncs streams one after another, in name order. The first stream to reach a window
reads that window's file once: its own rows become its records, the rows of the other
streams of the job are spooled to local disk until their turn. Each stream's bookmark moves
to the end of a window once every record of that window has been written.
"""

from __future__ import annotations

import datetime as dt
import logging
import marshal
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from singer_sdk import Stream
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.mapper import RemoveRecordTransform, SameRecordTransform
from singer_sdk.singerlib import RecordMessage

from tap_marketo_activities.client import MarketoError
from tap_marketo_activities.export import JobTimings
from tap_marketo_activities.quota import ExportQuota
from tap_marketo_activities.records import (
    REST_COLUMNS,
    FileRejected,
    Problems,
    RecordBuilder,
    check_whole,
    read_records,
    rest_cells,
)
from tap_marketo_activities.scheduler import ExportScheduler, PlannedJob, plan_jobs
from tap_marketo_activities.schema import (
    ALWAYS_PRESENT,
    BASE_COLUMNS,
    KEY,
    REPLICATION_KEY,
    type_id_of,
)
from tap_marketo_activities.settings import Settings, isoformat, parse_instant

if TYPE_CHECKING:
    from singer_sdk import Tap

    from tap_marketo_activities.client import MarketoClient

logger = logging.getLogger(__name__)

PAGING_TOKEN_PATH = "/rest/v1/activities/pagingtoken.json"
DELETED_LEADS_PATH = "/rest/v1/activities/deletedleads.json"
DELETED_LEADS_KEPT = dt.timedelta(days=14)


class ActivityStream(Stream):
    """The activities of one Marketo activity type."""

    primary_keys = (KEY,)
    bulk = True  # served by the shared bulk export jobs
    replication_key = REPLICATION_KEY
    is_sorted = False  # rows of an export file come in no particular order
    # The tap casts every value from the activity type's dataTypes (records.py), so the
    # SDK's conformance pass would only cost time.
    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE

    def __init__(self, tap: Tap, name: str, schema: dict[str, Any]) -> None:
        super().__init__(tap, schema=schema, name=name)
        self.type_id = type_id_of(schema)
        self.windows_done = 0
        self.records_written = 0
        self._pending_bookmark: str | None = None
        self.extracted_at = dt.datetime.now(dt.timezone.utc)

    def generate_child_contexts(self, record: dict, context: Any) -> Iterable[Any]:
        return ()  # no child streams: spare the SDK a copy of every record

    @cached_property
    def _plain_output(self) -> bool:
        """No stream map and no flattening: records go out as built."""
        maps = self.stream_maps
        return len(maps) == 1 and type(maps[0]) is SameRecordTransform and \
            not maps[0].flattening_enabled

    def _generate_record_messages(self, record: dict) -> Iterator[RecordMessage]:
        # The SDK's path copies each record to drop deselected fields and stamps each with
        # the clock; RecordBuilder already built only the selected fields, and one
        # extraction time per window is as true. Stream maps take the SDK's path.
        if not self._plain_output:
            yield from super()._generate_record_messages(record)
            return
        yield RecordMessage(stream=self.name, record=record, version=self._stream_version,
                            time_extracted=self.extracted_at)

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

    def start_instant(self, settings: Settings) -> dt.datetime:
        """Where this stream resumes: its bookmark, or start_date when later or unset."""
        bookmark = self.stream_state.get("replication_key_value")
        if not bookmark:
            return settings.start
        return max(settings.start, parse_instant("bookmark", bookmark))

    def get_records(self, context: dict | None) -> Iterable[dict[str, Any]]:
        exports: SharedExports = self._tap.exports  # type: ignore[attr-defined]
        previous_edge: set[str] = set()
        for planned in exports.jobs_of(self.name):
            lower, upper = isoformat(planned.spec.start), isoformat(planned.spec.end)
            edge: set[str] = set()
            count = 0
            self.extracted_at = dt.datetime.now(dt.timezone.utc)
            try:
                for record in exports.records(planned, self):
                    stamp = record[REPLICATION_KEY]
                    # An inclusive endAt hands the boundary second to two windows of a run.
                    if stamp == lower and record[KEY] in previous_edge:
                        continue
                    if stamp == upper:
                        edge.add(record[KEY])
                    count += 1
                    yield record
            except (MarketoError, FileRejected) as exc:
                # Windows already exported still reach every stream; the sync then ends
                # with the first error, as one line (tap.sync_all).
                if exports.stop_reason is None:
                    exports.stop_reason = exc
                    logger.warning("Stopping before window %s .. %s (%s); windows already "
                                   "exported still go to every stream.", lower, upper,
                                   type(exc).__name__)
                break
            previous_edge = edge
            self._checkpoint(upper)
            self.windows_done += 1
            self.records_written += count
            logger.info("%s: %d records for window %s .. %s; bookmark now %s.",
                        self.name, count, lower, upper, upper)

    @cached_property
    def _batching(self) -> bool:
        return self.get_batch_config(self.config) is not None

    def _checkpoint(self, bookmark: str) -> None:
        """Move the bookmark to the end of a window whose records are all written.

        With BATCH messages the records of many windows sit in a batch file that the SDK
        announces later: the bookmark then moves once, in `get_batches`, after the last
        BATCH message is out."""
        if self._batching:
            self._pending_bookmark = bookmark
            return
        self._move_bookmark(bookmark)
        self._write_state_message()

    def get_batches(self, batch_config: Any, context: Any = None) -> Iterator[Any]:
        yield from super().get_batches(batch_config, context)
        # Only now has the SDK written the stream's last BATCH message.
        if self._pending_bookmark is not None:
            self._move_bookmark(self._pending_bookmark)
            self._pending_bookmark = None

    def _move_bookmark(self, bookmark: str) -> None:
        state = self.stream_state
        state["replication_key"] = REPLICATION_KEY
        state["replication_key_value"] = bookmark
        self._tap.note_exports_in_state()  # type: ignore[attr-defined]
        self.state_manager.is_flushed = False

    def _increment_stream_state(self, latest_record: dict, *, context: Any = None) -> None:
        """Bookmarks move per finished window (`_checkpoint`), never per record: rows of
        one file are unsorted, so a record's date says nothing of what is complete."""


class DeletedLeadStream(ActivityStream):
    """Type 37, Delete Lead: not exportable in bulk, read from Get Deleted Leads."""

    bulk = False

    def get_records(self, context: dict | None) -> Iterable[dict[str, Any]]:
        if not self.wanted:
            return
        settings: Settings = self._tap.settings  # type: ignore[attr-defined]
        client: MarketoClient = self._tap.client  # type: ignore[attr-defined]
        since = self.start_instant(settings)
        if since < dt.datetime.now(dt.timezone.utc) - DELETED_LEADS_KEPT:
            logger.warning("%s: resuming at %s, but Marketo keeps deleted leads for 14 days: "
                           "deletions before %s may be gone.", self.name, isoformat(since),
                           isoformat(dt.datetime.now(dt.timezone.utc) - DELETED_LEADS_KEPT))
        end = isoformat(settings.end)
        builder = RecordBuilder(self.name, self.schema, self.selected_columns())
        problems = Problems(self.name)
        token = client.get(PAGING_TOKEN_PATH, {"sinceDatetime": isoformat(since)})
        page = {"nextPageToken": token.get("nextPageToken"), "moreResult": True}
        number = 0
        while page.get("moreResult") and page.get("nextPageToken"):
            page = client.get(DELETED_LEADS_PATH, {"nextPageToken": page["nextPageToken"],
                                                   "batchSize": 300})
            for item in page.get("result") or []:
                number += 1
                if str(item.get("activityDate", "")) < end:
                    yield builder.build(rest_cells(item), REST_COLUMNS, number, problems)
        self._checkpoint(end)
        self.windows_done += 1


@dataclass
class _Spool:
    path: Path
    complete: bool = False


@dataclass
class SharedExports:
    """The export jobs of one sync, shared by all its streams, and the rows waiting for
    their stream's turn."""

    scheduler: ExportScheduler
    workdir: Path
    on_wait: Callable[[PlannedJob], None] = lambda planned: None
    stop_reason: MarketoError | FileRejected | None = None
    spools: dict[tuple[int, str], _Spool] = field(default_factory=dict)
    builders: dict[str, RecordBuilder] = field(default_factory=dict)
    bytes_downloaded: int = 0
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def begin(cls, client: MarketoClient, settings: Settings, streams: list[ActivityStream],
              earlier_exports: list[dict[str, Any]]) -> SharedExports:
        starts = {s.name: s.start_instant(settings) for s in streams}
        type_ids = {s.name: s.type_id for s in streams}
        fields = {s.name: s.export_fields() for s in streams}
        filters = {s.name: settings.primary_filters.get(s.type_id) for s in streams}
        jobs = plan_jobs(starts, type_ids, settings.end, dt.timedelta(days=settings.window_days),
                         fields, filters, export_format=settings.export_format,
                         header_names=tuple(settings.column_header_names.items()))
        for stream in streams:
            logger.info("%s: windows from %s to %s.", stream.name, isoformat(starts[stream.name]),
                        isoformat(settings.end))
        logger.info("Planned %d export jobs for %d streams (window_days=%d, up to %d jobs in "
                    "Marketo's queue at once).", len(jobs), len(streams), settings.window_days,
                    settings.max_jobs_in_queue)
        quota = ExportQuota.from_marketo(client, settings.max_export_bytes_per_day)
        workdir = Path(tempfile.mkdtemp(prefix="tap-marketo-activities-"))
        timings = JobTimings(settings.poll_interval, settings.job_timeout,
                             settings.max_job_attempts)
        scheduler = ExportScheduler(client, jobs, workdir, timings, settings.max_jobs_in_queue,
                                    quota, earlier_exports, settings.raw_files_dir)
        shared = cls(scheduler, workdir)
        for stream in streams:
            shared.builders[stream.name] = RecordBuilder(stream.name, stream.schema,
                                                         stream.selected_columns())
        scheduler.start()
        return shared

    def jobs_of(self, stream: str) -> list[PlannedJob]:
        return self.scheduler.windows_of(stream)

    def records(self, planned: PlannedJob, stream: ActivityStream) -> Iterator[dict[str, Any]]:
        index = self.scheduler.jobs.index(planned)
        spool = self.spools.pop((index, stream.name), None)
        if spool and spool.complete:
            yield from _read_spool(spool.path)
        else:
            yield from self._split(index, planned, stream.name)
        self.scheduler.consumed(planned, stream.name)

    def _split(self, index: int, planned: PlannedJob, mine: str) -> Iterator[dict[str, Any]]:
        """Read a job's file once: yield this stream's records, spool the others'."""
        done = self.scheduler.result(planned, self.on_wait)
        others = [s for s in planned.consumers_left if s != mine]
        builders = {self.builders[s].type_id: self.builders[s] for s in [mine, *others]}
        spools = {s: _Spool(self.workdir / f"{index}-{s}.spool") for s in others}
        writers = {self.builders[s].type_id: spools[s].path.open("wb") for s in others}
        problems = Problems(f"export {done.export_id}")
        own = self.builders[mine]
        dump = marshal.dump
        try:
            rows = read_records(done.path, planned.spec.export_format, builders, problems,
                                dict(planned.spec.header_names), planned.spec.fields)
            for builder, record in rows:
                if builder is own:
                    yield record
                else:
                    dump(record, writers[builder.type_id])
        finally:
            for writer in writers.values():
                writer.close()
        check_whole(problems, done.records)
        for name, spool in spools.items():
            spool.complete = True
            self.spools[(index, name)] = spool
        done.path.unlink(missing_ok=True)  # every row is now a record or in a spool
        if problems.counts:
            logger.warning("Export %s had problems: %s", done.export_id,
                           problems.summary())
        self.bytes_downloaded += done.file_size

    def close(self) -> None:
        self.scheduler.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _read_spool(path: Path) -> Iterator[dict[str, Any]]:
    load = marshal.load
    with path.open("rb") as spool:
        while True:
            try:
                yield load(spool)
            except EOFError:
                break
    path.unlink(missing_ok=True)
