"""The tap: settings, discovery of one stream per activity type, and the sync's frame
(start the shared exports, stop them cleanly, one line for a fatal error)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import replace
from functools import cached_property
from types import FrameType
from typing import Any, ClassVar, cast

from singer_sdk import Stream, Tap
from singer_sdk.exceptions import ConfigValidationError
from singer_sdk.helpers.capabilities import (
    CapabilitiesEnum,
    PluginCapabilities,
    TapCapabilities,
)
from singer_sdk.helpers.types import TapState
from singer_sdk.logging import ConsoleFormatter
from typing_extensions import override

from tap_marketo_activities.client import (
    FatalError,
    MarketoClient,
    MarketoError,
    Pacer,
    excerpt,
)
from tap_marketo_activities.coordinator import OnePass, Outcome
from tap_marketo_activities.delivery import StreamMapFailed
from tap_marketo_activities.inputs import first_problem
from tap_marketo_activities.merges import MERGED_LEADS, MergedLeadsStream
from tap_marketo_activities.output import OutputClosed, RecordBufferingWriter, Terminated
from tap_marketo_activities.quota import MB
from tap_marketo_activities.records import FileRejected
from tap_marketo_activities.schema import (
    DELETE_LEAD_TYPE_ID,
    MERGE_LEADS_TYPE_ID,
    activity_schema,
    stream_names,
    type_id_of,
)
from tap_marketo_activities.settings import (
    CONFIG_SCHEMA,
    Settings,
    SettingsError,
    parse_settings,
    unknown_settings,
)
from tap_marketo_activities.state import our_part
from tap_marketo_activities.streams import ActivityStream, DeletedLeadStream
from tap_marketo_activities.text import plural

logger = logging.getLogger(__name__)

TYPES_PATH = "/rest/v1/activities/types.json"
ERROR_LINE_CHARS = 400  # the one ERROR line of a failure; the details are at DEBUG


class TapMarketoActivities(Tap):
    """Marketo activities through the Bulk Activity Extract API and Get Lead Activities (REST)."""

    name = "tap-marketo-activities"
    package_name = "tap-marketo-activities"
    dynamic_catalog = True
    config_jsonschema = CONFIG_SCHEMA
    message_writer_class = RecordBufferingWriter
    # The SDK's defaults less activate-version, which only full-table streams use.
    capabilities: ClassVar[list[CapabilitiesEnum]] = [
        TapCapabilities.CATALOG,
        TapCapabilities.STATE,
        TapCapabilities.DISCOVER,
        PluginCapabilities.ABOUT,
        PluginCapabilities.STREAM_MAPS,
        PluginCapabilities.FLATTENING,
        PluginCapabilities.BATCH,
        PluginCapabilities.STRUCTURED_LOGGING,
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.dry_run = False  # no state written: --test, or the SDK's dry-run tests
        self.last_day_only = False  # --test: one day of exports proves the connection
        super().__init__(*args, **kwargs)

    # -- settings -----------------------------------------------------------------------

    @override
    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        # SettingsError, not the SDK's ConfigValidationError: the SDK logs that one as two
        # ERROR lines; main() logs ours as one.
        try:
            errors = super()._validate_config(raise_errors=raise_errors)
        except ConfigValidationError as exc:
            # A range or choice the schema refused: ours is the line that names the setting
            # and what it accepts.
            _ = self.settings
            # parse_settings accepted every number: the SDK compared a Decimal with a float
            # bound ('0.1 is less than the minimum of 0.1'), so only its other errors count.
            other = [e for e in exc.errors or [str(exc)]
                     if "the minimum of" not in e and "the maximum of" not in e]
            if other:
                raise SettingsError("; ".join(other)) from None
            errors = []
        if errors:
            return errors
        for name, closest in unknown_settings(self.config, self.config_jsonschema):
            hint = f"; did you mean {closest!r}?" if closest else ""
            logger.warning("Unknown setting %r: ignored%s", name, hint)
        try:
            _ = self.settings
        except SettingsError as exc:
            if raise_errors:
                raise
            return [str(exc)]
        return []

    @cached_property
    def settings(self) -> Settings:
        return parse_settings(self.config)

    @cached_property
    def client(self) -> MarketoClient:
        settings = self.settings
        return MarketoClient(
            settings.base_url,
            settings.client_id,
            settings.client_secret,
            timeout=(10.0, settings.request_timeout),
            max_retry_seconds=settings.max_retry_seconds,
            pacer=Pacer(settings.api_limit_share),
        )

    # -- discovery ----------------------------------------------------------------------

    @override
    def discover_streams(self) -> list[ActivityStream]:
        if self.input_catalog is not None:
            streams = [
                _stream_class(type_id_of(schema))(self, entry.stream or entry.tap_stream_id,
                                                  schema)
                for entry in self.input_catalog.values()
                if "activityTypeId" in (schema := entry.schema.to_dict()).get("properties", {})
            ]
            streams += [MergedLeadsStream(self, entry.stream or entry.tap_stream_id,
                                          entry.schema.to_dict())
                        for entry in self.input_catalog.values()
                        if entry.tap_stream_id == MERGED_LEADS]
            _one_stream_per_type(streams)
            return streams
        types = self._activity_types()
        names = stream_names(types)  # over all types, so a filter never renames a stream
        wanted = self.settings.activity_type_ids
        said: set[str | None] = set()  # unknown dataTypes: one line each per discovery
        streams = [
            _stream_class(int(t["id"]))(self, names[int(t["id"])], activity_schema(t, said))
            for t in types
            if wanted is None or int(t["id"]) in wanted
        ]
        if any(s.type_id == MERGE_LEADS_TYPE_ID for s in streams):
            streams.append(MergedLeadsStream(self))  # made from the Merge Leads rows
        if not streams:
            raise FatalError(f"None of activity_type_ids {list(wanted or [])} is an activity "
                             "type of this instance: see the type ids at "
                             "/rest/v1/activities/types.json, or leave the setting out.")
        return streams

    def _activity_types(self) -> list[dict[str, Any]]:
        envelope = self.client.get(TYPES_PATH, check=_types_problem)
        types = envelope.get("result") or []
        if not types:
            raise FatalError(f"Marketo lists no activity types ({TYPES_PATH} answered an empty "
                             "result): the API user's role needs 'Read-Only Activity'. Run "
                             "again later if it has it.")
        logger.info("Marketo lists %d activity types.", len(types))
        return types

    # -- sync ---------------------------------------------------------------------------

    @override
    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.raw_state.update(our_part(state))  # the SDK keeps only `bookmarks`

    @property
    def raw_state(self) -> dict[str, Any]:
        """The whole tap state: the SDK's `bookmarks`, and our keys beside them (the SDK
        types the state as holding `bookmarks` only)."""
        return cast("dict[str, Any]", self.state)

    @cached_property
    def effective_settings(self) -> Settings:
        """The settings this sync runs with: `--test` exports the last day only, so that a
        connection test costs little export quota."""
        settings = self.settings
        if self.last_day_only:
            last_day = settings.end - dt.timedelta(days=1)
            settings = replace(settings, start=max(settings.start, last_day))
        return settings

    @override  # type: ignore[misc]  # @final in the SDK: tests/test_sdk_contract.py
    def sync_all(self) -> None:
        """One pass over every source of rows (sync.OnePass); one line if it failed."""
        started = time.monotonic()
        if self.state:
            self.state_writer.write_state(self.state)
        streams = [s for s in self.streams.values() if isinstance(s, ActivityStream)]
        one_pass = OnePass(
            settings=self.effective_settings, client=self.client, streams=streams,
            state=self.raw_state, write_state=self._write_state,
            batch_config=streams[0].get_batch_config(self.config) if streams else None,
            dry_run=self.dry_run)
        try:
            outcome = one_pass.run()
        finally:
            self.flush_output()
        self._log_summary(streams, outcome, time.monotonic() - started)
        for stream in streams:
            stream.log_sync_costs()
        if outcome.warning:
            logger.warning("%s", outcome.warning)
        if outcome.failure:
            raise outcome.failure

    def _write_state(self, state: dict[str, Any]) -> None:
        self.state_writer.write_state(cast("TapState", state))

    @override  # type: ignore[misc]  # @final, as sync_all
    def run_connection_test(self) -> bool:
        """`--test`: one record of every stream, from the last day's export only."""
        self.last_day_only = True
        return self.run_sync_dry_run(dry_run_record_limit=1)

    @override  # type: ignore[misc]  # @final, as sync_all
    def run_sync_dry_run(
            self, dry_run_record_limit: int | None = 1,
            streams: Iterable[Stream] | None = None) -> bool:
        """The SDK syncs a dry run stream after stream; here it is one pass like any sync,
        with the record limit per stream, and no state that a real run would start from."""
        self.dry_run = True
        for stream in streams or self.streams.values():
            stream.ABORT_AT_RECORD_COUNT = dry_run_record_limit
            stream.selected = True
        self.sync_all()
        return True

    def flush_output(self) -> None:
        """Records still gathered for a large write go out (see RecordBufferingWriter)."""
        writer = self.message_writer
        if isinstance(writer, RecordBufferingWriter):
            # A closed stdout: the run's own error, or the state written before, says it.
            with contextlib.suppress(OutputClosed):
                writer.flush()

    @override
    def _handle_termination(self, signum: int, frame: FrameType | None) -> None:
        """Unwind at once; the sync's `finally` emits the state and cancels our jobs. Only
        flags are set here: the interrupted code may hold any lock."""
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)
        writer = self.message_writer
        if isinstance(writer, RecordBufferingWriter) and writer.writing:
            writer.deferred_signal = signum  # raised once the message is whole
            return
        raise Terminated(signum)

    def _log_summary(self, streams: list[ActivityStream], outcome: Outcome,
                     elapsed: float) -> None:
        rows = [(s.name, s.records_written, s.windows_done, s.rest_reads) for s in streams
                if s.selected]
        if not rows:
            return
        width = max([len(r[0]) for r in rows] + [6])
        if self.dry_run:  # no bookmark moves: windows and the plan would say otherwise
            lines = [f"{'stream':<{width}} {'records':>9}"]
            lines += [f"{name:<{width}} {records:>9}" for name, records, _, _ in rows]
            lines.append("A test run: at most one record per stream, no bookmark moved.")
        else:
            # windows: export files read; reads: Get Lead Activities reads delivered whole
            lines = [f"{'stream':<{width}} {'records':>9} {'windows':>8} {'reads':>6}"]
            lines += [f"{name:<{width}} {records:>9} {windows:>8} {reads:>6}"
                      for name, records, windows, reads in rows]
        lines.append(f"{plural(outcome.jobs, 'export job')}, "
                     f"{outcome.downloaded_bytes / MB:.2f} MB downloaded, "
                     f"{outcome.quota_used_bytes / MB:.2f} MB of export quota used today; "
                     f"{plural(outcome.rest_reads, 'Get Lead Activities read')} of "
                     f"{plural(outcome.rest_calls, 'call')} "
                     f"({outcome.rest_used_today} of max_rest_calls_per_day="
                     f"{outcome.rest_budget} used today); "
                     f"{plural(self.client.calls, 'API call')} in all, {elapsed:.1f} s.")
        if outcome.late:
            lines.append(f"{plural(outcome.late, 'late activity')} (dated before their "
                         "stream's bookmark at the start of the run): see the Late activities "
                         "line.")
        if outcome.plan_line and not self.dry_run:
            lines.append(outcome.plan_line)
        if outcome.purged_line:
            lines.append(outcome.purged_line)
        logger.info("Sync summary:\n%s", "\n".join(lines))


def _one_stream_per_type(streams: list[ActivityStream]) -> None:
    """Rows are routed by activity type: two streams of one type would split its rows."""
    seen: dict[int, str] = {}
    for stream in streams:
        if stream.derived:  # merged_leads reads type 32 beside activities_merge_leads
            continue
        if stream.type_id in seen:
            raise FatalError(
                f"The catalog has two streams for activity type {stream.type_id} "
                f"({seen[stream.type_id]} and {stream.name}); keep one, or run discovery "
                "again."
            )
        seen[stream.type_id] = stream.name


def _types_problem(result: Any) -> str | None:
    if not all(isinstance(t, dict) and isinstance(t.get("id"), int) for t in result or []):
        return "an activity type without an id"
    return None


def _stream_class(type_id: int) -> type[ActivityStream]:
    return DeletedLeadStream if type_id == DELETE_LEAD_TYPE_ID else ActivityStream


def main() -> None:
    """Console entry point: a failure is one line, not a stack trace (DEBUG shows it)."""
    log = logging.getLogger(TapMarketoActivities.name)
    problem = first_problem(sys.argv[1:])
    if problem:  # before the SDK has set logging up: the line in its format all the same
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(ConsoleFormatter())
        log.addHandler(handler)
        log.error("%s", problem)
        sys.exit(1)
    try:
        TapMarketoActivities.cli()
    except Terminated as stop:
        log.error("Stopped by %s. The last state written covers every window delivered, "
                  "and lists the export jobs that could not be cancelled; the next run "
                  "resumes there.", signal.Signals(stop.signum).name)
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        os._exit(128 + stop.signum)  # workers may sit in a retry wait: do not join them
    except (MarketoError, SettingsError, FileRejected, OutputClosed, StreamMapFailed) as exc:
        log.error("%s", excerpt(str(exc), ERROR_LINE_CHARS))
        logger.debug("Details", exc_info=True)
        sys.exit(1)
    except Exception as exc:
        log.error("Unexpected %s: %s. This is a bug of the tap: please report it with the "
                  "log at DEBUG (TAP_MARKETO_ACTIVITIES_LOGLEVEL=DEBUG). The state above is "
                  "safe to resume from.", type(exc).__name__, excerpt(str(exc), 200))
        logger.debug("Details", exc_info=True)
        sys.exit(1)
