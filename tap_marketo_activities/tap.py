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
from dataclasses import replace
from functools import cached_property
from types import FrameType
from typing import Any, ClassVar

from singer_sdk import Tap
from singer_sdk.contrib.msgspec import MsgSpecWriter
from singer_sdk.exceptions import ConfigValidationError
from singer_sdk.helpers.capabilities import (
    CapabilitiesEnum,
    PluginCapabilities,
    TapCapabilities,
)
from singer_sdk.singerlib import Message, RecordMessage

from tap_marketo_activities.client import (
    FatalError,
    MarketoClient,
    MarketoError,
    Pacer,
    excerpt,
)
from tap_marketo_activities.records import FileRejected
from tap_marketo_activities.scheduler import PlannedJob
from tap_marketo_activities.schema import (
    DELETE_LEAD_TYPE_ID,
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
from tap_marketo_activities.streams import ActivityStream, DeletedLeadStream, SharedExports

logger = logging.getLogger(__name__)

TYPES_PATH = "/rest/v1/activities/types.json"
ERROR_LINE_CHARS = 400  # the one ERROR line of a failure; the details are at DEBUG
EXPORTS_STATE_KEY = "marketo_exports"  # our jobs still in Marketo, to re-attach after a crash


class Terminated(BaseException):
    """SIGINT or SIGTERM: unwinds through every `except Exception`, like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class RecordBufferingWriter(MsgSpecWriter):
    """msgspec serialisation, and no flush after each RECORD: a flush per record is a
    system call per record on a pipe. Every other message (SCHEMA, STATE) flushes, so a
    state never reaches the target before the records it covers.

    A signal that comes while a message is being written waits for the end of it: a
    message cut in the middle would be one unreadable line for the target."""

    writing = False
    deferred_signal: int | None = None

    def write_message(self, message: Message) -> None:
        self.writing = True
        try:
            sys.stdout.buffer.write(self.format_message(message))
            if not isinstance(message, RecordMessage):
                sys.stdout.flush()
        finally:
            self.writing = False
        if self.deferred_signal is not None:
            raise Terminated(self.deferred_signal)


class TapMarketoActivities(Tap):
    """Marketo activities through the Bulk Activity Extract API."""

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
        self._exports: SharedExports | None = None
        self._dry_run = False
        self._wait_started: dict[int, float] = {}
        super().__init__(*args, **kwargs)

    # -- settings -----------------------------------------------------------------------

    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        # SettingsError, not the SDK's ConfigValidationError: the SDK logs that one as two
        # ERROR lines; main() logs ours as one.
        try:
            errors = super()._validate_config(raise_errors=raise_errors)
        except ConfigValidationError as exc:
            raise SettingsError("; ".join(exc.errors) or str(exc)) from None
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

    def discover_streams(self) -> list[ActivityStream]:
        if self.input_catalog is not None:
            streams = [
                _stream_class(type_id_of(schema))(self, entry.stream, schema)
                for entry in self.input_catalog.values()
                if "activityTypeId" in (schema := entry.schema.to_dict()).get("properties", {})
            ]
            _one_stream_per_type(streams)
            return streams
        types = self._activity_types()
        names = stream_names(types)  # over all types, so a filter never renames a stream
        wanted = self.settings.activity_type_ids
        streams = [
            _stream_class(int(t["id"]))(self, names[int(t["id"])], activity_schema(t))
            for t in types
            if wanted is None or int(t["id"]) in wanted
        ]
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

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if state.get(EXPORTS_STATE_KEY):  # the SDK keeps only `bookmarks`
            self.state[EXPORTS_STATE_KEY] = state[EXPORTS_STATE_KEY]

    @property
    def exports(self) -> SharedExports:
        """The sync's export jobs, planned when the first stream asks for records."""
        if self._exports is None:
            selected = [s for s in self.streams.values()
                        if isinstance(s, ActivityStream) and s.bulk and s.wanted]
            earlier = self.state.get(EXPORTS_STATE_KEY) or []
            settings = self.settings
            if self._dry_run:
                last_day = settings.end - dt.timedelta(days=1)
                settings = replace(settings, start=max(settings.start, last_day))
            self._exports = SharedExports.begin(self.client, settings, selected, earlier)
            self._exports.on_wait = self._while_waiting
        return self._exports

    def note_exports_in_state(self) -> bool:
        """Put our jobs still needed into the state; True when that changed it."""
        if self._exports is None:
            return False  # not started yet: what an earlier run left stays
        keep = self._exports.scheduler.exports_to_keep()
        if self.state.get(EXPORTS_STATE_KEY, []) == keep:
            return False
        if keep:
            self.state[EXPORTS_STATE_KEY] = keep
        else:
            self.state.pop(EXPORTS_STATE_KEY, None)
        return True

    def _while_waiting(self, planned: PlannedJob) -> None:
        if self.note_exports_in_state():
            self.state_writer.write_state(self.state)
        if sys.stderr.isatty():  # a person is watching: none on a pipe or in Meltano's log
            job = planned.job
            status = job.status if job else "waiting for a queue slot"
            if job and job.received:
                status = f"downloading, {job.received / 1e6:.1f} MB"
            waited = time.monotonic() - self._wait_started.setdefault(id(planned), time.monotonic())
            sys.stderr.write(f"\r\033[K  {planned.spec.label}: {status} ({waited:.0f} s)\r")
            sys.stderr.flush()

    def sync_all(self) -> None:
        started = time.monotonic()
        try:
            super().sync_all()
        finally:
            self._stop_exports()
        self._log_summary(time.monotonic() - started)
        if self._exports is not None and self._exports.stop_reason is not None:
            raise self._exports.stop_reason

    def run_connection_test(self) -> bool:
        # One day of exports proves the connection; a backfill would spend quota on it.
        self._dry_run = True
        try:
            return super().run_connection_test()
        finally:
            self._stop_exports()

    def _stop_exports(self) -> None:
        """State first (it is what matters if we are killed next), then our jobs in
        Marketo are cancelled, then the state again without them."""
        if self._exports is not None:
            try:
                self._write_state_if_possible()
            finally:
                self._exports.close()
            self.note_exports_in_state()
            self._write_state_if_possible()
        if sys.stderr.isatty():
            sys.stderr.write("\033[K")

    def _write_state_if_possible(self) -> None:
        try:
            self.state_writer.write_state(self.state)
        except OSError as exc:  # the target is gone (broken pipe): nothing to tell it
            logger.warning("Could not write the state: %s", exc)

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

    def _log_summary(self, elapsed: float) -> None:
        if self._exports is None:
            return
        rows = [(s.name, s.records_written, s.windows_done) for s in self.streams.values()
                if isinstance(s, ActivityStream) and s.selected]
        width = max([len(r[0]) for r in rows] + [6])
        lines = [f"{'stream':<{width}} {'records':>9} {'windows':>8}"]
        lines += [f"{name:<{width}} {records:>9} {windows:>8}" for name, records, windows in rows]
        quota = self._exports.scheduler.quota
        lines.append(
            f"{len(self._exports.scheduler.jobs)} export jobs, "
            f"{self._exports.bytes_downloaded / 1e6:.1f} MB downloaded, "
            f"{quota.used_bytes / 1024 / 1024:.1f} MB of export quota used today, "
            f"{self.client.calls} API calls, {elapsed:.1f} s."
        )
        logger.info("Sync summary:\n%s", "\n".join(lines))


def _one_stream_per_type(streams: list[ActivityStream]) -> None:
    """Rows are routed by activity type: two streams of one type would split its rows."""
    seen: dict[int, str] = {}
    for stream in streams:
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
    try:
        TapMarketoActivities.cli()
    except Terminated as stop:
        log.error("Stopped by %s. The last state written covers every window delivered, "
                  "and lists the export jobs that could not be cancelled; the next run "
                  "resumes there.", signal.Signals(stop.signum).name)
        with contextlib.suppress(OSError):
            sys.stdout.flush()
        os._exit(128 + stop.signum)  # workers may sit in a retry wait: do not join them
    except (MarketoError, SettingsError, FileRejected) as exc:
        log.error("%s", excerpt(str(exc), ERROR_LINE_CHARS))
        logger.debug("Details", exc_info=True)
        sys.exit(1)
    except Exception as exc:
        log.error("Unexpected %s: %s. This is a bug of the tap: please report it with the "
                  "log at DEBUG (TAP_MARKETO_ACTIVITIES_LOGLEVEL=DEBUG). The state above is "
                  "safe to resume from.", type(exc).__name__, excerpt(str(exc), 200))
        logger.debug("Details", exc_info=True)
        sys.exit(1)
