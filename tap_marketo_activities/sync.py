"""The sync: every window of every selected stream, each row through one record path.

Marketo's unit of work is the window (one export file holds every selected type); the SDK's
is the stream. Here each row, as the file is read, goes through `delivery.RecordPath` to its
own stream's SDK record loop, so records of different streams interleave on stdout and
nothing is kept on disk but the files in flight. When a window is done, the bookmark of
every stream it served moves, in one STATE message. Get Deleted Leads pages take the same
record path, as one window from the stream's bookmark to the end.

The tap hands the one pass what it needs (settings, client, streams, the state and a way to
write it, the batch config, dry run) and reads back an `Outcome`; nothing here knows the
Tap class.

Data flows one way: settings and streams -> windows (`plan`) -> jobs (scheduler) -> file
(export) -> records (records, delivery) -> state (here).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import itertools
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tap_marketo_activities.client import ExportQuotaExhausted, MarketoClient, MarketoError
from tap_marketo_activities.delivery import Delivered, RecordPath, Window
from tap_marketo_activities.export import CompletedExport, JobTimings, used_today
from tap_marketo_activities.output import OutputClosed
from tap_marketo_activities.quota import ExportQuota, mb, reset_text
from tap_marketo_activities.records import (
    REST_COLUMNS,
    FileRejected,
    Problems,
    RecordBuilder,
    check_whole,
    read_records,
    rest_cells,
)
from tap_marketo_activities.rest import deleted_leads
from tap_marketo_activities.scheduler import (
    BACKWARD,
    FORWARD,
    ExportScheduler,
    PlannedJob,
    plan_jobs,
)
from tap_marketo_activities.schema import REPLICATION_KEY
from tap_marketo_activities.settings import Settings, isoformat
from tap_marketo_activities.streams import LOW_EDGE, ActivityStream
from tap_marketo_activities.text import plural
from tap_marketo_activities.workdir import RunFolder

if TYPE_CHECKING:
    # Typing only: the SDK has no public path for it (tests/test_sdk_contract.py).
    from singer_sdk.helpers._batch import BatchConfig

logger = logging.getLogger(__name__)

EXPORTS_STATE_KEY = "marketo_exports"  # our jobs still in Marketo, to re-use after a crash
SIZES_STATE_KEY = "marketo_export_sizes"  # bytes per day per type, learnt from exports
DELETED_LEADS_KEPT = dt.timedelta(days=14)
RESUME_NAMES_SHOWN = 6  # stream names in a `Resuming ...` line; the rest are counted


def plan(streams: list[ActivityStream], settings: Settings) -> list[PlannedJob]:
    """Every job this run needs, in the order their windows are delivered: what is new
    since each stream's bookmark going forward, and what is older than its `covered_from`
    going backward (newest first), one before the other as `backfill_order` says."""
    forward: dict[str, dt.datetime] = {}
    backward: dict[str, dt.datetime] = {}
    newest_first = settings.backfill_order == "newest_first"
    for stream in streams:
        high, low = stream.high_edge(), stream.low_edge(settings.start)
        if high is None:
            (backward if newest_first else forward)[stream.name] = \
                settings.end if newest_first else settings.start
            continue
        if max(high, settings.start) < settings.end:
            forward[stream.name] = max(high, settings.start)
        if low is not None and low > settings.start:
            backward[stream.name] = min(low, settings.end)
    common: dict[str, Any] = {
        "type_ids": {s.name: s.type_id for s in streams},
        "width": dt.timedelta(days=settings.window_days),
        "anchor": settings.start,  # the same grid in every run: a crashed run's jobs fit
        "fields": {s.name: s.export_fields() for s in streams},
        "filters": {s.name: settings.primary_filters.get(s.type_id) for s in streams},
        "export_format": settings.export_format,
        "header_names": tuple(settings.column_header_names.items()),
    }
    ahead = plan_jobs(forward, end=settings.end, direction=FORWARD, **common)
    behind = plan_jobs(backward, end=settings.start, direction=BACKWARD, **common)
    return ahead + behind if newest_first else behind + ahead


@dataclass
class Outcome:
    """What a sync did, for the summary, and how it ended."""

    windows: int = 0
    jobs: int = 0
    downloaded_bytes: int = 0
    quota_used_bytes: float = 0.0
    plan_line: str | None = None
    failure: Exception | None = None  # ends the run: one ERROR line, exit 1
    warning: str | None = None  # a planned stop (the day's export quota): exit 0


class OnePass:
    """One sync: deleted leads, then every window's export file read once for all its
    streams, each row through the one record path (delivery.RecordPath)."""

    def __init__(self, *, settings: Settings, client: MarketoClient,
                 streams: list[ActivityStream], state: dict[str, Any],
                 write_state: Callable[[dict[str, Any]], None],
                 batch_config: BatchConfig | None, dry_run: bool) -> None:
        self.settings = settings
        self.client = client
        self.state = state  # the whole tap state: every stream's bookmarks and our keys
        self._write_state = write_state
        self.dry_run = dry_run  # --test: no bookmark moves, and the state goes out as it came
        self._state_in = copy.deepcopy(state)
        self.deleted = [s for s in streams if not s.bulk and s.wanted]
        self.streams = [s for s in streams if s.bulk and s.wanted]
        self.path = RecordPath(batch_config, self._on_progress)
        self.stop_reason: MarketoError | FileRejected | None = None
        self.windows_delivered = 0
        self.bytes_downloaded = 0
        self.scheduler: ExportScheduler | None = None
        self.folder: RunFolder | None = None
        self._plan_logged = False
        self._waiting_since: dict[int, float] = {}

    # -- the run ------------------------------------------------------------------------

    def run(self) -> Outcome:
        """The whole sync; its end (state, our jobs cancelled, temp files) even when it
        fails or is stopped."""
        self._log_resume()
        try:
            for stream in self.deleted:
                self._deleted_leads(stream)
            self._bulk()
            self.path.finish()
        finally:
            self.close()
            if self.dry_run:  # one STATE, as it came: a run started from it loses nothing
                self._write_state(self._state_in)
        return self._outcome()

    def _log_resume(self) -> None:
        """Where each stream resumes, one line per starting point."""
        points: dict[str, list[str]] = {}
        for stream in self.deleted + self.streams:
            high = stream.high_edge()
            point = (f"{isoformat(stream.start_instant(self.settings))} (its bookmark)" if high
                     else f"{isoformat(self.settings.start)} (start_date: no bookmark yet)")
            low = stream.stream_state.get(LOW_EDGE)
            if low and high and low > isoformat(self.settings.start):
                point += f", and back from {low} (newest_first)"
            points.setdefault(point, []).append(stream.name)
        for point, names in sorted(points.items()):
            shown = ", ".join(names[:RESUME_NAMES_SHOWN])
            if len(names) > RESUME_NAMES_SHOWN:
                shown += f" and {len(names) - RESUME_NAMES_SHOWN} more"
            logger.info("Resuming %s at %s: %s.", plural(len(names), "stream"), point, shown)

    def _deleted_leads(self, stream: ActivityStream) -> None:
        """Get Deleted Leads from the stream's bookmark to the end, as one window."""
        now = dt.datetime.now(dt.timezone.utc)
        window = Window(stream.start_instant(self.settings), self.settings.end)
        if window.start < now - DELETED_LEADS_KEPT:
            logger.warning("%s: resuming at %s, but Marketo keeps deleted leads for 14 days: "
                           "deletions before %s may be gone.", stream.name, window.lower,
                           isoformat(now - DELETED_LEADS_KEPT))
        builder = stream.builder()
        problems = Problems(stream.name)
        record_of = builder.bind(REST_COLUMNS, problems)
        items = itertools.takewhile(lambda item: str(item.get(REPLICATION_KEY)) < window.upper,
                                    deleted_leads(self.client, window.start))
        rows = ((builder, record_of(rest_cells(item), n)) for n, item in enumerate(items, 1))
        self.path.deliver(rows, {builder: stream}, window)
        if problems.counts:
            logger.warning("%s had problems: %s", stream.name, problems.summary())
        if not self.dry_run:  # --test reads one record: that covers nothing
            stream.covered(window.start, window.end)
            self.write_state()

    def _bulk(self) -> None:
        if not self.streams:
            return
        jobs = plan(self.streams, self.settings)
        self._log_plan(jobs)
        if not jobs:
            return
        self.scheduler = self._scheduler(jobs)
        self._log_plan_line()  # sizes known from earlier runs: the plan before any export
        for stream in self.streams:
            self.path.feed(stream)
        self.scheduler.start()
        index = 0
        while (planned := self.scheduler.job_at(index)) is not None:
            if not self._window(planned):
                break
            index += 1

    def _scheduler(self, jobs: list[PlannedJob]) -> ExportScheduler:
        settings, client = self.settings, self.client
        now = dt.datetime.now(dt.timezone.utc)
        quota = ExportQuota(settings.max_export_bytes_per_day, used_today(client, now),
                            self.state.get(SIZES_STATE_KEY))
        logger.info("Bulk export quota: %s used today by this API user; this tap stops "
                    "before %s (max_export_mb_per_day).", mb(quota.used_bytes),
                    mb(quota.cap_bytes))
        self.folder = RunFolder()
        timings = JobTimings(settings.poll_interval, settings.job_timeout,
                             settings.max_job_attempts)
        return ExportScheduler(client, jobs, self.folder.path, timings,
                               settings.max_jobs_in_queue, quota,
                               self.state.get(EXPORTS_STATE_KEY) or [],
                               settings.raw_files_dir, settings.heartbeat_seconds)

    def _window(self, planned: PlannedJob) -> bool:
        """Deliver one window to every stream it serves; False: stop here."""
        assert self.scheduler is not None
        try:
            done = self.scheduler.result(planned, self._on_wait)
            delivered = self._emit(planned, done)
        except (MarketoError, FileRejected) as exc:
            # Windows already delivered keep their state; the sync ends with this error
            # as one line (tap.sync_all), or a warning for a day's quota.
            if isinstance(exc, FileRejected) and planned.job is not None:
                planned.job.status = "Rejected"  # not kept in the state: the next run asks anew
            self.stop_reason = exc
            logger.debug("Stopping before %s", planned.spec.label, exc_info=True)
            return False
        self._end_window(planned, delivered)
        return self.path.open  # --test: every stream has its one record

    def _emit(self, planned: PlannedJob, done: CompletedExport) -> Delivered:
        """Every row of the window's file, as a record of its stream."""
        served = [s for s in self.streams if s.name in planned.streams]
        builders: dict[int, RecordBuilder | None] = {t: None for t in planned.spec.type_ids}
        streams: dict[RecordBuilder, ActivityStream] = {}
        for stream in served:
            if stream.type_id in planned.needed_types:
                builder = builders[stream.type_id] = stream.builder()
                streams[builder] = stream
        problems = Problems(f"export {done.export_id}")
        rows = read_records(done.path, planned.spec.export_format, builders, problems,
                            dict(planned.spec.header_names), planned.spec.fields)
        delivered = self.path.deliver(rows, streams, Window(planned.spec.start,
                                                            planned.spec.end))
        check_whole(problems, done.records)
        if problems.counts:
            logger.warning("Export %s had problems: %s", done.export_id, problems.summary())
        self.bytes_downloaded += done.file_size
        return delivered

    def _end_window(self, planned: PlannedJob, delivered: Delivered) -> None:
        assert self.scheduler is not None
        backward = planned.direction == BACKWARD
        served = [s for s in self.streams if s.name in delivered.records]
        if not self.dry_run:
            for stream in served:
                stream.covered(planned.spec.start, planned.spec.end, backward=backward)
        sizes = {s.type_id: delivered.records[s.name] for s in served}
        self.scheduler.emitted(planned, sizes)
        self.windows_delivered += 1
        self.write_state()
        self._log_window(planned, delivered)
        self._log_plan_line()

    def _log_window(self, planned: PlannedJob, delivered: Delivered) -> None:
        total = sum(delivered.records.values())
        edge = ""
        if delivered.at_upper_edge:
            edge = (f" ({plural(delivered.at_upper_edge, 'row')} of the file stamped at its "
                    "end go with the next window)")
        logger.info("Window %s .. %s: %s for %s%s; delivered.", isoformat(planned.spec.start),
                    isoformat(planned.spec.end), plural(total, "record"),
                    plural(len(delivered.records), "stream"), edge)

    def _log_plan_line(self) -> None:
        """The `Backfill plan:` line, once a run, as soon as an export size is known."""
        if not self._plan_logged:
            line = self.plan_line()
            if line:
                logger.info("%s", line)
                self._plan_logged = True

    # -- state --------------------------------------------------------------------------

    def write_state(self) -> None:
        """One STATE: every stream's bookmark, our jobs still needed, the learnt sizes."""
        version = None
        if self.scheduler is not None:
            version, exports = self.scheduler.exports_for_state()
            if exports:
                self.state[EXPORTS_STATE_KEY] = exports
            else:
                self.state.pop(EXPORTS_STATE_KEY, None)
            self.state[SIZES_STATE_KEY] = self.scheduler.quota.saved_rates()
        if not self.dry_run:  # --test leaves no state that a run would start from
            # A target that stopped reading ends the run (OutputClosed): exporting on for
            # nobody would spend quota on windows the next run must export again.
            self._write_state(self.state)
        if self.scheduler is not None and version is not None:
            self.scheduler.state_written(version)

    def _on_progress(self) -> None:
        """Now and then while rows are written: a new job may wait for the state to name it
        before it is enqueued."""
        if self.scheduler is not None and self.scheduler.state_wanted():
            self.write_state()

    def _on_wait(self, planned: PlannedJob) -> None:
        self._on_progress()
        if sys.stderr.isatty():  # a person is watching: none on a pipe or in Meltano's log
            job = planned.job
            status = job.status if job else "waiting for room (queue or quota)"
            if job and job.received:
                status = f"downloading, {mb(job.received)}"
            since = self._waiting_since.setdefault(id(planned), time.monotonic())
            sys.stderr.write(f"\r\033[K  {planned.spec.label}: {status} "
                             f"({time.monotonic() - since:.0f} s)\r")
            sys.stderr.flush()

    # -- the end ------------------------------------------------------------------------

    def close(self) -> None:
        """State first (what matters if we are killed next), then our jobs in Marketo are
        cancelled, then the state again without them."""
        if self.scheduler is not None:
            self.scheduler.stop.set()  # no job enqueued from here on, even one named below
            try:
                with contextlib.suppress(OutputClosed):
                    self.write_state()
            finally:
                self.scheduler.close()
            with contextlib.suppress(OutputClosed):
                self.write_state()
        if self.folder is not None:
            self.folder.close()
        if sys.stderr.isatty():
            sys.stderr.write("\033[K")

    def _outcome(self) -> Outcome:
        outcome = Outcome(windows=self.windows_delivered,
                          downloaded_bytes=self.bytes_downloaded,
                          plan_line=self.plan_line())
        if self.scheduler is not None:
            outcome.jobs = sum(1 for p in self.scheduler.jobs if p.job is not None)
            outcome.quota_used_bytes = self.scheduler.quota.used_bytes
        reason = self.stop_reason
        if isinstance(reason, ExportQuotaExhausted):
            if self.windows_delivered:
                outcome.warning = self.stop_line()  # a multi-day backfill goes on tomorrow
            else:
                outcome.failure = ExportQuotaExhausted(self.stop_line())
                outcome.failure.__cause__ = reason
        else:
            outcome.failure = reason
        return outcome

    def plan_line(self) -> str | None:
        if self.scheduler is None:
            return None
        left = self.scheduler.left_bytes()
        if left is None:
            return None
        return self.scheduler.quota.plan_line(left, len(self.streams),
                                              dt.datetime.now(dt.timezone.utc))

    def stop_line(self) -> str:
        """What a run stopped by the export quota did today, what is left, and when the
        quota resets (UTC and US Central)."""
        line = str(self.stop_reason)
        if "UTC" not in line:
            line += f" The quota resets at {reset_text(dt.datetime.now(dt.timezone.utc))}."
        left = self.scheduler.left_bytes() if self.scheduler else None
        left_text = f"about {mb(left)}" if left is not None else "an unknown amount"
        if self.windows_delivered:
            used = self.scheduler.quota.used_by_run if self.scheduler else 0
            done = (f"This run delivered {plural(self.windows_delivered, 'window')} and "
                    f"exported {mb(used)}")
        else:
            done = "Nothing could be exported today"
        return f"{line} {done}; {left_text} is left to export."

    def _log_plan(self, jobs: list[PlannedJob]) -> None:
        settings = self.settings
        if not jobs:
            logger.info("Nothing to export: every selected stream is up to date (%s).",
                        isoformat(settings.end))
            return
        first = min(job.spec.start for job in jobs)
        logger.info("Planned %s for %s, %s .. %s (window_days=%d, up to %d jobs in "
                    "Marketo's queue at once, %s).", plural(len(jobs), "export window"),
                    plural(len(self.streams), "stream"), isoformat(first),
                    isoformat(settings.end), settings.window_days, settings.max_jobs_in_queue,
                    settings.backfill_order.replace("_", " "))
