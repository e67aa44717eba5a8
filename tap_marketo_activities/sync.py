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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tap_marketo_activities.client import ExportQuotaExhausted, MarketoClient, MarketoError
from tap_marketo_activities.delivery import Delivered, RecordPath, Window
from tap_marketo_activities.export import CompletedExport, JobTimings, used_today
from tap_marketo_activities.increments import (
    REST_STATE_KEY,
    CallBudget,
    RestRead,
    call_cap,
    count_daily_usage,
    groups_of,
)
from tap_marketo_activities.instants import isoformat
from tap_marketo_activities.merges import Routes
from tap_marketo_activities.output import OutputClosed
from tap_marketo_activities.quota import ExportQuota, mb, reset_text
from tap_marketo_activities.records import (
    FileRejected,
    Problems,
    RecordBuilder,
    check_whole,
    read_records,
)
from tap_marketo_activities.rest import deleted_leads
from tap_marketo_activities.scheduler import (
    BACKWARD,
    FORWARD,
    ExportScheduler,
    PlannedJob,
    PlanRequest,
    plan_jobs,
)
from tap_marketo_activities.schema import BULK_ONLY_COLUMNS, REPLICATION_KEY
from tap_marketo_activities.settings import Settings, parse_instant
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
CHECKPOINT_SECONDS = 5.0  # a REST read's progress goes into the state this often
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
    request = PlanRequest(
        type_ids={s.name: s.type_id for s in streams},
        width=dt.timedelta(days=settings.window_days),
        anchor=settings.start,  # the same grid in every run: a crashed run's jobs fit
        fields={s.name: s.export_fields() for s in streams},
        filters={s.name: settings.primary_filters.get(s.type_id) for s in streams},
        export_format=settings.export_format,
        header_names=tuple(settings.column_header_names.items()),
    )
    ahead = plan_jobs(forward, end=settings.end, request=request, direction=FORWARD)
    behind = plan_jobs(backward, end=settings.start, request=request, direction=BACKWARD)
    return ahead + behind if newest_first else behind + ahead


def rows_per_type(served: list[ActivityStream], delivered: Delivered) -> dict[int, int]:
    """What a window's file held per type, as its streams' record counts: a derived
    stream's count (merged_leads) stands in for its type only when it was served alone."""
    sizes: dict[int, int] = {}
    for stream in served:
        if not stream.derived or stream.type_id not in sizes:
            sizes[stream.type_id] = delivered.records[stream.name]
    return sizes


@dataclass
class Outcome:
    """What a sync did, for the summary, and how it ended."""

    jobs: int = 0
    downloaded_bytes: int = 0
    quota_used_bytes: float = 0.0
    plan_line: str | None = None
    rest_windows: int = 0
    rest_calls: int = 0
    rest_used_today: int = 0
    rest_budget: int = 0
    failure: Exception | None = None  # ends the run: one ERROR line, exit 1
    warning: str | None = None  # a planned stop (the day's export quota): exit 0


class RestBudgetSpent(Exception):
    """`rest_increments: always` and max_rest_calls_per_day is reached: a planned stop."""


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
        self.stop_reason: MarketoError | FileRejected | RestBudgetSpent | None = None
        self.windows_delivered = 0
        self.bytes_downloaded = 0
        self.scheduler: ExportScheduler | None = None
        self.folder: RunFolder | None = None
        self._plan_logged = False
        self._waiting_since: dict[int, float] = {}
        self.budget = CallBudget.from_state(settings.max_rest_calls_per_day,
                                            state.get(REST_STATE_KEY),
                                            dt.datetime.now(dt.timezone.utc),
                                            on_reserve=self.write_state)
        self.final_state = False  # the budget's exact count: the last STATE of the run
        self.usage_read = False
        self.rest_windows = 0
        self._bulk_only_said: set[str] = set()

    # -- the run ------------------------------------------------------------------------

    def run(self) -> Outcome:
        """The whole sync; its end (state, our jobs cancelled, temp files) even when it
        fails or is stopped."""
        self._log_resume()
        try:
            for stream in self.deleted:
                self._deleted_leads(stream)
            self._rest_increments()
            if self.stop_reason is None and self.path.open:
                self._bulk()
            if isinstance(self.stop_reason, ExportQuotaExhausted):
                self._rest_instead_of_bulk()
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
        record_of = builder.bind_rest(problems)
        items = itertools.takewhile(lambda item: str(item.get(REPLICATION_KEY)) < window.upper,
                                    deleted_leads(self.client, window.start))
        rows = ((builder, record_of(item, n)) for n, item in enumerate(items, 1))
        self.path.deliver(rows, {builder: stream}, window)
        if problems.counts:
            logger.warning("%s had problems: %s", stream.name, problems.summary())
        if not self.dry_run:  # --test reads one record: that covers nothing
            stream.covered(window.start, window.end)
            self.write_state()

    # -- REST increments ------------------------------------------------------------------

    def _rest_increments(self, *, fallback: bool = False) -> None:
        """The forward increment of each group of streams that share a bookmark, through
        Get Lead Activities where `rest_increments` and the call budget say so (before any
        export job is planned: what a read reaches needs none). `fallback`: the day's
        export quota is gone, so every window the budget covers goes through REST."""
        mode = self.settings.rest_increments
        if mode == "off":
            return
        if not self.usage_read:
            self.usage_read = True
            count_daily_usage(self.client, self.budget)
        cohorts: dict[dt.datetime, list[ActivityStream]] = {}
        for stream in self._rest_streams():
            start = stream.start_instant(self.settings)
            if start < self.settings.end:
                cohorts.setdefault(start, []).append(stream)
        for start, streams in sorted(cohorts.items(), key=lambda item: item[0]):
            window = Window(start, self.settings.end)
            groups = len(groups_of([s.type_id for s in streams]))
            cap = call_cap(mode, self.budget, window.end - window.start, groups, fallback)
            self._log_rest_choice(window, streams, groups, cap)
            if cap is None and mode == "always":
                self._budget_spent(window, window.lower)  # spent by earlier runs today
                return
            if cap is None:
                continue
            self._rest_window(streams, window, cap)
            if self.stop_reason is not None or not self.path.open:
                return

    def _rest_streams(self) -> list[ActivityStream]:
        """Streams Get Lead Activities can serve: it has no `actionResult`, and no filter on
        the primary attribute."""
        streams = []
        for stream in self.streams:
            bulk_only = sorted(stream.selected_columns() & BULK_ONLY_COLUMNS)
            if bulk_only:
                if stream.name not in self._bulk_only_said:
                    logger.info("%s selects %s, which Get Lead Activities does not return: "
                                "it is read through bulk export.", stream.name,
                                " and ".join(bulk_only))
                    self._bulk_only_said.add(stream.name)
            elif stream.type_id not in self.settings.primary_filters:
                streams.append(stream)
        return streams

    def _log_rest_choice(self, window: Window, streams: list[ActivityStream], groups: int,
                         cap: int | None) -> None:
        budget = self.budget
        estimate = budget.estimate(window.end - window.start, groups)
        about = f"about {plural(estimate, 'call')}" if estimate is not None else \
            "cost not learnt yet"
        road = "Get Lead Activities" if cap is not None else \
            "no road today (rest_increments: always)" if self.settings.rest_increments == \
            "always" else "bulk export"
        logger.info("Increment %s .. %s for %s: through %s (%s; %d of max_rest_calls_per_day="
                    "%d used today).", window.lower, window.upper,
                    plural(len(streams), "stream"), road, about, budget.used, budget.limit)

    def _rest_window(self, streams: list[ActivityStream], window: Window, cap: int) -> None:
        """One REST read of [start, end) for these streams, through the record path, its
        progress in the state every few seconds."""
        problems = Problems(f"Get Lead Activities {window.lower} .. {window.upper}")
        routes = Routes(streams, problems)
        builders = routes.builders
        bound = {t: b.bind_rest(problems) for t, b in builders.items()}
        read = RestRead(self.client, self.budget, cap, window.start, window.upper,
                        list(builders), problems)
        members = [[s for s in streams if s.type_id in group.types] for group in read.groups]
        calls_before = self.budget.run_calls
        last_checkpoint = [time.monotonic()]

        def checkpoint() -> None:
            self._rest_checkpoint(read, members)
            last_checkpoint[0] = time.monotonic()

        def rows() -> Iterator[tuple[RecordBuilder, dict[str, Any]]]:
            number = 0
            for _, activities in read.activities():
                for activity in activities:
                    number += 1
                    problems.rows = number
                    type_id = activity["activityTypeId"]  # of the read's types: it sifts
                    yield builders[type_id], bound[type_id](activity, number)
                if time.monotonic() - last_checkpoint[0] >= CHECKPOINT_SECONDS:
                    checkpoint()

        delivered: Delivered | None = None
        try:
            delivered = self.path.deliver(routes.rows(rows()), routes.streams, window)
        except (MarketoError, FileRejected) as exc:
            self.stop_reason = exc
            logger.debug("Stopping in %s .. %s", window.lower, window.upper, exc_info=True)
        finally:
            read.stop.set()  # --test may end the read early: its threads stop paging
        checkpoint()
        self._end_rest_window(read, members, window, delivered, calls_before)
        if problems.counts:
            logger.warning("%s had problems: %s", problems.label, problems.summary())

    def _rest_checkpoint(self, read: RestRead, members: list[list[ActivityStream]]) -> None:
        for group, group_streams in zip(read.groups, members, strict=True):
            for stream in group_streams:
                self.path.feed(stream).end_window()  # BATCH files before the state
                if group.edge and not self.dry_run:
                    stream.reached(group.edge)
        self.write_state()

    def _end_rest_window(self, read: RestRead, members: list[list[ActivityStream]],
                         window: Window, delivered: Delivered | None,
                         calls_before: int) -> None:
        done = [s for group, streams in zip(read.groups, members, strict=True) if group.done
                for s in streams]
        for group in read.groups:
            reached_at = window.end if group.done else parse_instant("edge", group.edge) \
                if group.edge else window.start
            self.budget.learn(group.calls, reached_at - window.start)
        if not self.dry_run:
            for stream in done:
                stream.windows_done += 1
        self.rest_windows += bool(done)
        reached = min((g.edge for g in read.groups if g.edge), default=window.lower)
        served = sum(map(len, members))
        logger.info("Increment %s .. %s: %s for %s through Get Lead Activities in %s (%d of "
                    "max_rest_calls_per_day=%d used today)%s.", window.lower, window.upper,
                    plural(sum(delivered.records.values()) if delivered else 0, "record"),
                    plural(served, "stream"),
                    plural(self.budget.run_calls - calls_before, "call"), self.budget.used,
                    self.budget.limit,
                    "; delivered" if len(done) == served
                    else f"; delivered up to {reached}")
        if read.spent and self.stop_reason is None:
            self._budget_spent(window, reached)

    def _budget_spent(self, window: Window, reached: str) -> None:
        if self.settings.rest_increments == "always":
            resets = reset_text(dt.datetime.now(dt.timezone.utc))
            self.stop_reason = RestBudgetSpent(
                f"max_rest_calls_per_day ({self.budget.limit}) is reached for today: the "
                f"increment is delivered up to {reached}, and the next run after the reset "
                f"({resets}) goes on from there; raise max_rest_calls_per_day to read more "
                "a day.")
        else:
            logger.info("The REST read of %s .. %s reached its call cap at %s; bulk export "
                        "takes it from there.", window.lower, window.upper, reached)

    # -- bulk exports ---------------------------------------------------------------------

    def _bulk(self) -> None:
        """What REST did not cover: windows too big for it, streams it cannot serve, and the
        older part of a newest-first backfill (REST reads forward from each bookmark)."""
        streams = self.streams
        if not streams:
            return
        jobs = plan(streams, self.settings)
        self._log_plan(jobs)
        if not jobs:
            return
        self.scheduler = self._scheduler(jobs)
        self._log_plan_line()  # sizes known from earlier runs: the plan before any export
        for stream in streams:
            self.path.feed(stream)
        self.scheduler.start()
        index = 0
        while (planned := self.scheduler.job_at(index)) is not None:
            if not self._window(planned):
                break
            index += 1

    def _rest_instead_of_bulk(self) -> None:
        """The day's export quota is gone: what the call budget covers of the increment
        goes through Get Lead Activities instead of waiting for midnight."""
        if self.settings.rest_increments == "off" or self.budget.left() <= 0:
            return
        quota_stop, self.stop_reason = self.stop_reason, None
        logger.info("The export quota is gone for today: the increment goes on through Get "
                    "Lead Activities, within max_rest_calls_per_day.")
        self._rest_increments(fallback=True)
        if self.stop_reason is None and plan(self.streams, self.settings):
            self.stop_reason = quota_stop  # older windows, or streams REST cannot serve

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
            done = self.scheduler.result(planned, self._on_wait)
            delivered = self._emit(planned, done)
        except (MarketoError, FileRejected) as exc:
            # Windows already delivered keep their state; the sync ends with this error
            # as one line (tap.sync_all), or a warning for a day's quota.
            if isinstance(exc, FileRejected):
                self.scheduler.rejected(planned)
            self.stop_reason = exc
            logger.debug("Stopping before %s", planned.spec.label, exc_info=True)
            return False
        self._end_window(planned, delivered)
        return self.path.open  # --test: every stream has its one record

    def _emit(self, planned: PlannedJob, done: CompletedExport) -> Delivered:
        """Every row of the window's file, as a record of its stream."""
        served = [s for s in self.streams if s.name in planned.streams]
        problems = Problems(f"export {done.export_id}")
        routes = Routes([s for s in served if s.type_id in planned.needed_types], problems)
        builders: dict[int, RecordBuilder | None] = {t: None for t in planned.spec.type_ids}
        builders.update(routes.builders)
        rows = read_records(done.path, planned.spec.export_format, builders, problems,
                            dict(planned.spec.header_names), planned.spec.fields)
        delivered = self.path.deliver(routes.rows(rows), routes.streams,
                                      Window(planned.spec.start, planned.spec.end))
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
        self.scheduler.emitted(planned, rows_per_type(served, delivered))
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
        self.state[REST_STATE_KEY] = self.budget.saved(final=self.final_state)
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
        self.final_state = True
        if self.scheduler is None and self.budget.run_calls:
            with contextlib.suppress(OutputClosed):
                self.write_state()
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
        outcome = Outcome(downloaded_bytes=self.bytes_downloaded,
                          plan_line=self.plan_line())
        if self.scheduler is not None:
            outcome.jobs = sum(1 for p in self.scheduler.jobs if p.job is not None)
            outcome.quota_used_bytes = self.scheduler.quota.used_bytes
        outcome.rest_windows = self.rest_windows
        outcome.rest_calls = self.budget.run_calls
        outcome.rest_used_today = self.budget.used
        outcome.rest_budget = self.budget.limit
        reason = self.stop_reason
        if isinstance(reason, RestBudgetSpent):
            outcome.warning = str(reason)  # the increment goes on tomorrow
        elif isinstance(reason, ExportQuotaExhausted):
            if self.windows_delivered or self.rest_windows:
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
        if self.rest_windows:
            done += (f"; {plural(self.rest_windows, 'increment')} came through Get Lead "
                     "Activities")
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
