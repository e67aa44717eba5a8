"""The bulk road: the plan's bulk reads as export jobs (one per window for every stream the
window serves, scheduler.py), each file read once, every row through the one record path.

When a window is delivered, the bookmark of every stream it served moves, in one STATE. A
new job is named in the state before it is enqueued, so a run killed at any moment re-uses
it instead of paying the export again.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from typing import Any

from tap_marketo_activities.client import MarketoError
from tap_marketo_activities.delivery import Delivered, Window
from tap_marketo_activities.export import CompletedExport, JobTimings, cancel_export, used_today
from tap_marketo_activities.instants import isoformat
from tap_marketo_activities.merges import Routes
from tap_marketo_activities.plan import Read
from tap_marketo_activities.quota import ExportQuota, mb
from tap_marketo_activities.records import (
    FileRejected,
    Problems,
    RecordBuilder,
    check_whole,
    read_records,
)
from tap_marketo_activities.retention import retention_of
from tap_marketo_activities.roads import Context
from tap_marketo_activities.scheduler import (
    BACKWARD,
    FORWARD,
    ExportScheduler,
    PlannedJob,
    PlanRequest,
    plan_jobs,
)
from tap_marketo_activities.settings import Settings, parse_instant
from tap_marketo_activities.state import EXPORTS_STATE_KEY, SIZES_STATE_KEY
from tap_marketo_activities.streams import ActivityStream
from tap_marketo_activities.text import plural
from tap_marketo_activities.workdir import RunFolder

logger = logging.getLogger(__name__)


def jobs_of(reads: list[Read], streams: list[ActivityStream], ctx: Context) -> list[PlannedJob]:
    """The plan's bulk reads as jobs on the window grid, in the reads' order of directions."""
    settings = ctx.settings
    request = PlanRequest(
        type_ids={s.name: s.type_id for s in streams},
        width=dt.timedelta(days=settings.window_days),
        anchor=settings.start,  # the same grid in every run: a crashed run's jobs fit
        fields={s.name: s.export_fields() for s in streams},
        filters={s.name: settings.primary_filters.get(s.type_id) for s in streams},
        export_format=settings.export_format,
        header_names=tuple(settings.column_header_names.items()),
        kept_from=kept_from(streams, settings),
        remember_after=parse_instant("remember_after", ctx.path.remember_after)
        if ctx.path.remember_after else None,
    )
    first = [job for r in reads if r.first for job in _jobs_of_read(r, request)]
    reads = [r for r in reads if not r.first]
    forward = {n: r.start for r in reads if r.direction == FORWARD for n in r.streams}
    backward = {n: r.end for r in reads if r.direction == BACKWARD for n in r.streams}
    lowest = {n: r.start for r in reads if r.direction == BACKWARD for n in r.streams}
    ahead = plan_jobs(forward, end=settings.end, request=request, direction=FORWARD)
    behind = plan_jobs(backward, end=settings.start, request=request, direction=BACKWARD,
                       lowest=lowest)
    first_forward = next((r for r in reads if r.direction == FORWARD), None)
    first_backward = next((r for r in reads if r.direction == BACKWARD), None)
    if first_backward and first_forward and reads.index(first_backward) < \
            reads.index(first_forward):
        return first + behind + ahead
    return first + ahead + behind


def _jobs_of_read(read: Read, request: PlanRequest) -> list[PlannedJob]:
    """The jobs of one read on its own (a read that goes before the others)."""
    if read.direction == FORWARD:
        return plan_jobs(dict.fromkeys(read.streams, read.start), end=read.end,
                         request=request, direction=FORWARD)
    return plan_jobs(dict.fromkeys(read.streams, read.end), end=read.start, request=request,
                     direction=BACKWARD)


def kept_from(streams: list[ActivityStream], settings: Settings) -> dict[int, dt.datetime]:
    """Per type, where Marketo's purge leaves its rows today (what a file teaches of sizes)."""
    found = {}
    for stream in streams:
        retention = retention_of(stream.type_id, stream.name, settings.retention_months)
        deleted = retention.deleted_before(settings.end)
        if deleted is not None:
            found[stream.type_id] = deleted
    return found


def rows_per_type(served: list[ActivityStream], delivered: Delivered) -> dict[int, int]:
    """What a window's file held per type, as its streams' record counts: a derived
    stream's count (merged_leads) stands in for its type only when it was served alone."""
    sizes: dict[int, int] = {}
    for stream in served:
        if not stream.derived or stream.type_id not in sizes:
            sizes[stream.type_id] = delivered.records[stream.name]
    return sizes


class BulkRoad:
    """Export jobs run ahead of the window being written; windows delivered in order."""

    def __init__(self, ctx: Context, streams: list[ActivityStream], state: dict[str, Any]
                 ) -> None:
        self.ctx = ctx
        self.streams = streams
        self.state = state
        self.scheduler: ExportScheduler | None = None
        self.folder: RunFolder | None = None
        self.floors: dict[str, dt.datetime] = {}
        self.failure: MarketoError | FileRejected | None = None
        self.windows_delivered = 0
        self.bytes_downloaded = 0
        self._plan_logged = False
        self._waiting_since: dict[int, float] = {}

    def run(self, reads: list[Read]) -> None:
        """Every window of these reads, until one fails or --test has its records."""
        streams = [s for s in self.streams if any(s.name in r.streams for r in reads)]
        jobs = jobs_of(reads, streams, self.ctx)
        self._log_plan(jobs, streams)
        if not jobs:
            return
        self.floors = {}
        for read in reads:  # a stream read first and then with the others: its lowest floor
            for name in read.streams if read.direction == FORWARD else ():
                self.floors[name] = min(read.floor(name), self.floors.get(name, read.end))
            if read.first:
                logger.info("Read first: %s, %s .. %s (%s).", ", ".join(read.streams),
                            isoformat(read.start), isoformat(read.end), read.why)
        self.scheduler = self._scheduler(jobs)
        self._log_plan_line()  # sizes known from earlier runs: the plan before any export
        for stream in streams:
            self.ctx.path.feed(stream)
        self.scheduler.start()
        index = 0
        while (planned := self.scheduler.job_at(index)) is not None:
            if not self._window(planned):
                break
            index += 1

    def _scheduler(self, jobs: list[PlannedJob]) -> ExportScheduler:
        settings, client = self.ctx.settings, self.ctx.client
        now = dt.datetime.now(dt.timezone.utc)
        quota = ExportQuota(settings.max_export_bytes_per_day, used_today(client, now),
                            self.state.get(SIZES_STATE_KEY))
        logger.info("Bulk export quota: %s used today by this API user; this tap stops "
                    "before %s (max_export_mb_per_day).", mb(quota.used_bytes),
                    mb(quota.cap_bytes))
        self.folder = RunFolder()
        timings = JobTimings(settings.poll_interval, settings.job_timeout,
                             settings.max_job_attempts)
        return ExportScheduler(client=client, jobs=jobs, workdir=self.folder.path,
                               timings=timings, max_in_queue=settings.max_jobs_in_queue,
                               quota=quota,
                               earlier_exports=self.state.get(EXPORTS_STATE_KEY) or [],
                               raw_files_dir=settings.raw_files_dir,
                               heartbeat_seconds=settings.heartbeat_seconds)

    def _window(self, planned: PlannedJob) -> bool:
        """Deliver one window to every stream it serves; False: stop here."""
        assert self.scheduler is not None
        try:
            done = self.scheduler.result(planned, self.on_wait)
            delivered = self._emit(planned, done)
        except (MarketoError, FileRejected) as exc:
            # Windows already delivered keep their state; the run ends with this error as
            # one line, or a warning for a day's quota.
            if isinstance(exc, FileRejected):
                self.scheduler.rejected(planned)
            self.failure = exc
            logger.debug("Stopping before %s", planned.spec.label, exc_info=True)
            return False
        self._end_window(planned, delivered)
        return self.ctx.path.open  # --test: every stream has its one record

    def _emit(self, planned: PlannedJob, done: CompletedExport) -> Delivered:
        """Every row of the window's file, as a record of its stream."""
        served = [s for s in self.streams if s.name in planned.streams]
        problems = Problems(f"export {done.export_id}")
        routes = Routes([s for s in served if s.type_id in planned.needed_types], problems)
        builders: dict[int, RecordBuilder | None] = {t: None for t in planned.spec.type_ids}
        builders.update(routes.builders)
        rows = read_records(done.path, planned.spec.export_format, builders, problems,
                            dict(planned.spec.header_names), planned.spec.fields)
        window = Window(planned.spec.start, planned.spec.end)
        floors = {s.name: isoformat(self.floors[s.name]) for s in served
                  if planned.direction == FORWARD and s.name in self.floors
                  and self.floors[s.name] > planned.spec.start}
        delivered = self.ctx.path.deliver(routes.rows(rows), routes.streams, window, floors)
        check_whole(problems, done.records)
        if problems.counts:
            logger.warning("Export %s had problems: %s", done.export_id, problems.summary())
        self.bytes_downloaded += done.file_size
        return delivered

    def _end_window(self, planned: PlannedJob, delivered: Delivered) -> None:
        assert self.scheduler is not None
        served = [s for s in self.streams if s.name in delivered.records]
        if not self.ctx.dry_run:
            for stream in served:
                stream.covered(planned.spec.start, planned.spec.end,
                               backward=planned.direction == BACKWARD)
                stream.windows_done += 1
        self.scheduler.emitted(planned, rows_per_type(served, delivered))
        self.windows_delivered += 1
        self.ctx.checkpoint()
        self._log_window(planned, delivered)
        self._log_plan_line()

    def _log_window(self, planned: PlannedJob, delivered: Delivered) -> None:
        total = sum(delivered.records.values())
        edge = ""
        if delivered.at_upper_edge:
            edge = (f" ({plural(delivered.at_upper_edge, 'row')} of the file stamped at its "
                    "end will come with the next window)")
        logger.info("Window %s .. %s: %s for %s%s; delivered.", isoformat(planned.spec.start),
                    isoformat(planned.spec.end), plural(total, "record"),
                    plural(len(delivered.records), "stream"), edge)

    def _log_plan(self, jobs: list[PlannedJob], streams: list[ActivityStream]) -> None:
        settings = self.ctx.settings
        if not jobs:
            logger.info("Nothing to export: every selected stream is up to date (%s).",
                        isoformat(settings.end))
            return
        first = min(job.spec.start for job in jobs)
        logger.info("Planned %s for %s, %s .. %s (window_days=%d, up to %d jobs in "
                    "Marketo's queue at once, %s).", plural(len(jobs), "export window"),
                    plural(len(streams), "stream"), isoformat(first),
                    isoformat(settings.end), settings.window_days, settings.max_jobs_in_queue,
                    settings.backfill_order.replace("_", " "))

    def _log_plan_line(self) -> None:
        """The `Backfill plan:` line, once a run, as soon as an export size is known."""
        if not self._plan_logged:
            line = self.plan_line()
            if line:
                logger.info("%s", line)
                self._plan_logged = True

    def plan_line(self) -> str | None:
        """The `Backfill plan:` line, for a backfill that takes more than this run only."""
        if self.scheduler is None:
            return None
        left, quota = self.scheduler.left_bytes(), self.scheduler.quota
        if left is None or not quota.runs_after_today(left):
            return None
        return quota.plan_line(left, len(self.streams), dt.datetime.now(dt.timezone.utc))

    # -- the state and the end --------------------------------------------------------------

    def state_part(self, state: dict[str, Any]) -> int | None:
        """Our jobs still needed and the learnt sizes into `state`; the version to confirm
        with `state_written` once that state is out."""
        if self.scheduler is None:
            return None
        version, exports = self.scheduler.exports_for_state()
        if exports:
            state[EXPORTS_STATE_KEY] = exports
        else:
            state.pop(EXPORTS_STATE_KEY, None)
        state[SIZES_STATE_KEY] = self.scheduler.quota.saved_rates()
        return version

    def state_written(self, version: int | None) -> None:
        if self.scheduler is not None and version is not None:
            self.scheduler.state_written(version)

    def state_wanted(self) -> bool:
        """A new job waits for the state to name it before it is enqueued."""
        return self.scheduler is not None and self.scheduler.state_wanted()

    def on_wait(self, planned: PlannedJob) -> None:
        if self.state_wanted():
            self.ctx.checkpoint()
        if sys.stderr.isatty():  # a person is watching: none on a pipe or in Meltano's log
            job = planned.job
            status = job.status if job else "waiting for room (queue or quota)"
            if job and job.received:
                status = f"downloading, {mb(job.received)}"
            since = self._waiting_since.setdefault(id(planned), time.monotonic())
            sys.stderr.write(f"\r\033[K  {planned.spec.label}: {status} "
                             f"({time.monotonic() - since:.0f} s)\r")
            sys.stderr.flush()

    def stop(self) -> None:
        """No job is enqueued from here on, even one the next state names."""
        if self.scheduler is not None:
            self.scheduler.stop.set()

    def close(self) -> None:
        """Our jobs still in Marketo are cancelled; temp files go."""
        try:
            if self.scheduler is not None:
                self.scheduler.close()
            elif self.state.get(EXPORTS_STATE_KEY):
                self._cancel_earlier()
        finally:
            if self.folder is not None:
                self.folder.close()

    def _cancel_earlier(self) -> None:
        """No bulk read this run: an earlier run's jobs serve no window any more (another
        road took it), so none is left running in Marketo."""
        for export in self.state.pop(EXPORTS_STATE_KEY, None) or []:
            if "exportId" in export:
                cancel_export(self.ctx.client, str(export["exportId"]), once=True)
