"""Windows and the job schedule: which export jobs a sync needs, and running them ahead.

Windows line up on one grid for every stream and every run: the grid starts at
`start_date` and steps by `window_days`, so that a run after a crash plans the very
windows the crashed run had jobs for, and re-uses them. A stream whose bookmark falls
inside a grid window gets one shorter first window up to the next grid line (shared with
every stream of the same bookmark); from there on it shares the grid windows, and so one
job per window serves all streams. A stream therefore never receives a row from before
its own bookmark. Windows that go backward in time (`backfill_order: newest_first`) are
the same grid, mirrored.

The scheduler starts jobs in window order, at most `max_jobs_in_queue` of them ahead of the
window whose records are being written (so temp disk holds at most that many files), each
only once the daily export quota has room for it: a window that does not fit is cut
shorter, and while no size is known the first window is a one-day probe that runs alone.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, TimeoutError, wait
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

from tap_marketo_activities.client import (
    ExportQuotaExhausted,
    MarketoClient,
    QuotaExhausted,
    Stopped,
)
from tap_marketo_activities.delivered import REMEMBER_SPAN
from tap_marketo_activities.export import (
    EXPORT_FIELDS,
    FIRST_POLL_SECONDS,
    KEPT_STATUSES,
    RUNNING_STATUSES,
    CompletedExport,
    ExportJob,
    JobSpec,
    JobStatus,
    JobTimings,
    StatusBoard,
    cancel_export,
    keep_raw_file,
    spec_of_export,
)
from tap_marketo_activities.quota import WORTH_A_JOB, ExportQuota, mb, size_key
from tap_marketo_activities.settings import PrimaryFilter
from tap_marketo_activities.text import plural

logger = logging.getLogger(__name__)

WAIT_TICK_SECONDS = 1.0
FORWARD, BACKWARD = "forward", "backward"
PROBE = dt.timedelta(days=1)  # the first window when no export size is known yet
SMALLEST_CUT = dt.timedelta(hours=1)  # a window cut to fit the quota is whole hours

Window = tuple[dt.datetime, dt.datetime]
Verdict = Literal["go", "wait", "refuse"]  # the quota's word on the next job (`_admit`)


@dataclass
class PlannedJob:
    spec: JobSpec
    streams: list[str]
    direction: str = FORWARD
    needed_types: tuple[int, ...] = ()  # what this run needs; a re-used job may ask more
    # Per type, when Marketo's purge leaves its rows (retention.py): a file teaches the size
    # of a type only over the part of its window where the type can have rows.
    kept_from: Mapping[int, dt.datetime] = field(default_factory=dict)
    future: Future[CompletedExport] = field(default_factory=Future)
    job: ExportJob | None = None
    reserved: float = 0.0
    emitted: bool = False

    def __post_init__(self) -> None:
        self.needed_types = self.needed_types or self.spec.type_ids

    @property
    def size_keys(self) -> list[str]:
        return [size_key(t, self.spec.fields) for t in self.spec.type_ids]

    @property
    def seconds(self) -> float:
        return (self.spec.end - self.spec.start).total_seconds()

    def purged_lead(self) -> dt.timedelta:
        """How much of the window's start Marketo's purge has emptied of every type: a
        probe reaches past it, or it would learn nothing."""
        return min((max(dt.timedelta(), self.kept_from.get(t, self.spec.start) - self.spec.start)
                    for t in self.spec.type_ids), default=dt.timedelta())

    def kept_seconds(self, type_id: int) -> float:
        """The seconds of the window where Marketo's purge leaves rows of this type."""
        start = max(self.spec.start, self.kept_from.get(type_id, self.spec.start))
        return (self.spec.end - start).total_seconds()


def grid_windows(
    starts: Mapping[str, dt.datetime], end: dt.datetime, width: dt.timedelta,
    anchor: dt.datetime | None = None,
) -> dict[str, list[Window]]:
    """Each stream's windows from its start to `end`, aligned on one grid through `anchor`
    (default: the earliest start; module doc)."""
    if not starts:
        return {}
    anchor = min(starts.values()) if anchor is None else anchor
    plans: dict[str, list[Window]] = {}
    for stream, start in starts.items():
        windows = []
        steps = (start - anchor) // width
        edge = anchor + (steps + 1) * width
        lower = start
        while lower < end:
            upper = min(edge, end)
            windows.append((lower, upper))
            lower, edge = upper, edge + width
        plans[stream] = windows
    return plans


def backward_windows(
    ends: Mapping[str, dt.datetime], start: dt.datetime, width: dt.timedelta,
    anchor: dt.datetime | None = None,
) -> dict[str, list[Window]]:
    """Each stream's windows from its end back to `start`, newest first: the grid of
    `grid_windows` run on mirrored time (through `anchor`, default the latest end)."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

    def mirror(moment: dt.datetime) -> dt.datetime:
        return epoch + (epoch - moment) + dt.timedelta(days=365 * 400)

    mirrored = grid_windows({s: mirror(e) for s, e in ends.items()}, mirror(start), width,
                            None if anchor is None else mirror(anchor))
    return {s: [(mirror(b), mirror(a)) for a, b in windows] for s, windows in mirrored.items()}


@dataclass(frozen=True)
class PlanRequest:
    """What every job of a plan is asked with: each stream's type, the columns it needs
    (all when `fields` is None) and its primary attribute filter; the window grid; and the
    file's format and header names (JobSpec's defaults when not given)."""

    type_ids: Mapping[str, int]
    width: dt.timedelta
    anchor: dt.datetime | None = None  # the grid's origin; default the earliest start
    fields: Mapping[str, set[str]] | None = None
    filters: Mapping[str, PrimaryFilter | None] = field(default_factory=dict)
    export_format: str = JobSpec.export_format
    header_names: tuple[tuple[str, str], ...] = JobSpec.header_names
    kept_from: Mapping[int, dt.datetime] = field(default_factory=dict)  # PlannedJob's
    # The lookback's memory keeps every record of a window that ends after this instant
    # (delivery.RecordPath.remember_after); a long window across it is cut there.
    remember_after: dt.datetime | None = None


def cut_for_memory(windows: list[Window], instant: dt.datetime | None) -> list[Window]:
    """A window across `instant` that starts more than REMEMBER_SPAN before it is cut in
    two, so that the memory keeps only what lies after `instant`, not a month of rows. A
    read by commit time can hand any row of a window over again, so the memory cannot pick
    rows by date: the window itself must be short."""
    if instant is None:
        return windows
    cut: list[Window] = []
    for lower, upper in windows:
        if lower < instant - REMEMBER_SPAN and instant < upper:
            cut += [(lower, instant), (instant, upper)]
        else:
            cut.append((lower, upper))
    return cut


def plan_jobs(starts: Mapping[str, dt.datetime], *, end: dt.datetime, request: PlanRequest,
              direction: str = FORWARD, lowest: Mapping[str, dt.datetime] | None = None
              ) -> list[PlannedJob]:
    """One job per distinct window, serving every stream that needs that window, asking
    for the columns those streams need. A stream with a primary attribute filter gets jobs
    of its own (Marketo applies a filter to every type of a job). Going BACKWARD, `starts`
    are each stream's upper edge and `end` the lower bound; a stream's windows wholly below
    its `lowest` are left out (Marketo has deleted them)."""
    width, anchor, fields, filters = request.width, request.anchor, request.fields, \
        request.filters
    if direction == FORWARD:
        windows = grid_windows(starts, end, width, anchor)
    else:
        windows = backward_windows(starts, end, width, anchor)
    windows = {s: cut_for_memory(w, request.remember_after) for s, w in windows.items()}
    for stream, low in (lowest or {}).items():
        windows[stream] = [w for w in windows.get(stream, []) if w[1] > low]
    by_window: dict[tuple, list[str]] = {}
    for stream, stream_windows in windows.items():
        primary = filters.get(stream)
        for window in stream_windows:
            by_window.setdefault((*window, primary and stream), []).append(stream)
    jobs = []
    for (lower, upper, filtered), streams in sorted(by_window.items(), key=_order(direction)):
        ids = tuple(sorted({request.type_ids[s] for s in streams}))
        needed = set().union(*(fields[s] for s in streams)) if fields else set(EXPORT_FIELDS)
        columns = tuple(f for f in EXPORT_FIELDS if f in needed)
        primary = filters.get(filtered) if filtered else None
        spec = JobSpec(lower, upper, ids, columns, export_format=request.export_format,
                       primary_filter=primary, header_names=request.header_names)
        kept = {t: request.kept_from[t] for t in ids if t in request.kept_from}
        jobs.append(PlannedJob(spec, sorted(streams), direction, kept_from=kept))
    return jobs


def _order(direction: str) -> Callable[[tuple[tuple, list[str]]], tuple]:
    sign = 1 if direction == FORWARD else -1

    def key(item: tuple[tuple, list[str]]) -> tuple:
        lower, upper, filtered = item[0]
        return (sign * lower.timestamp(), sign * upper.timestamp(), filtered or "")

    return key


def covers(earlier: JobSpec, planned: PlannedJob) -> bool:
    """An earlier export serves a planned window when it starts at the planned window's
    edge (its end, going backward), lies inside it, and asks for every type and field."""
    wanted = planned.spec
    edge_ok = earlier.start == wanted.start if planned.direction == FORWARD else \
        earlier.end == wanted.end
    return (edge_ok and wanted.start <= earlier.start < earlier.end <= wanted.end
            and set(earlier.type_ids) >= set(wanted.type_ids)
            and set(earlier.fields) >= set(wanted.fields))


class ExportScheduler:
    """Runs planned jobs ahead of the window being written, in window order."""

    def __init__(self, *, client: MarketoClient, jobs: list[PlannedJob], workdir: Path,
                 timings: JobTimings, max_in_queue: int, quota: ExportQuota,
                 earlier_exports: Iterable[Mapping], raw_files_dir: Path | None,
                 heartbeat_seconds: float) -> None:
        self.client = client
        self.raw_files_dir = raw_files_dir
        self.earlier = [dict(e) for e in earlier_exports if "exportId" in e]
        self.jobs = jobs
        self.workdir = workdir
        self.timings = timings
        self.max_in_queue = max_in_queue
        self.quota = quota
        self.stop = threading.Event()
        self.board = StatusBoard(client, min(FIRST_POLL_SECONDS, timings.poll_interval))
        self.refusal: QuotaExhausted | None = None
        self.failure: Exception | None = None
        self.heartbeat_seconds = heartbeat_seconds
        self._cond = threading.Condition(threading.RLock())  # exports_for_state nests
        self._next = 0  # the next job to start
        self._emitted = 0  # jobs whose records are all written
        self._state_asked = 0  # versions of the exports list, to persist before enqueueing
        self._state_written = 0
        self._threads: list[threading.Thread] = []
        self._finished_seconds: list[float] = []

    # -- the consumer's side ----------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self._threads = [threading.Thread(target=self._work, name=f"export-{n}", daemon=True)
                         for n in range(self.max_in_queue)]
        self._threads.append(threading.Thread(target=self._heartbeat, name="heartbeat",
                                              daemon=True))
        for thread in self._threads:
            thread.start()

    def job_at(self, index: int) -> PlannedJob | None:
        """The index-th job in window order; jobs inserted by cuts are counted."""
        with self._cond:
            return self.jobs[index] if index < len(self.jobs) else None

    def result(self, planned: PlannedJob,
               on_wait: Callable[[PlannedJob], None]) -> CompletedExport:
        """Wait for a job's file, calling `on_wait` now and then. Raises the job's error,
        or for a job stopped on the way, the error that stopped it."""
        self.start()
        try:
            while True:
                try:
                    return planned.future.result(timeout=WAIT_TICK_SECONDS)
                except TimeoutError:
                    on_wait(planned)
        except Stopped:
            if self.failure is not None:
                raise self.failure from None
            raise

    def emitted(self, planned: PlannedJob, sizes: Mapping[int, int]) -> None:
        """Every record of a window is written: its file goes, and what it held per type
        (rows) teaches the quota the size of each type."""
        with self._cond:
            planned.emitted = True
            self._emitted += 1
            done = planned.future.result()
            total = sum(sizes.values())
            for type_id in planned.spec.type_ids:
                share = sizes.get(type_id, 0) / total if total else 1 / len(planned.spec.type_ids)
                seconds = planned.kept_seconds(type_id)
                if seconds > 0:  # a window Marketo had purged of this type teaches nothing
                    self.quota.learn({size_key(type_id, planned.spec.fields):
                                      done.file_size * share}, seconds)
            self._cond.notify_all()
        done.path.unlink(missing_ok=True)

    def rejected(self, planned: PlannedJob) -> None:
        """The window's file was refused while read: its job is not kept in the state, so
        the next run asks for the window anew."""
        with self._cond:
            if planned.job is not None:
                planned.job.status = JobStatus.REJECTED

    def state_wanted(self) -> bool:
        """A job was created and waits for the state to name it before it is enqueued."""
        return self._state_asked > self._state_written

    def exports_for_state(self) -> tuple[int, list[dict]]:
        """What the next STATE must list, and the version of it to pass to
        `state_written` once that STATE is out."""
        with self._cond:
            return self._state_asked, self.exports_to_keep()

    def state_written(self, version: int) -> None:
        with self._cond:
            self._state_written = max(self._state_written, version)
            self._cond.notify_all()

    def left_bytes(self) -> float | None:
        """An estimate of what the jobs not yet exported will cost, or None."""
        with self._cond:
            left = 0.0
            for planned in self.jobs:
                if planned.emitted or _exported(planned):
                    continue
                estimate = self.quota.estimate(planned.size_keys, planned.seconds)
                if estimate is None:
                    return None
                left += estimate
            return left

    # -- the workers ----------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while (planned := self._take()) is not None:
                try:
                    planned.future.set_result(self._run(planned))
                except BaseException as exc:
                    planned.future.set_exception(exc)
        except Exception as exc:  # a bug in planning: fail the jobs, never leave them waiting
            with self._cond:
                self.failure = self.failure or exc
                self._refuse_rest(exc)
                self._cond.notify_all()

    def _take(self) -> PlannedJob | None:
        with self._cond:
            while True:
                if self.stop.is_set() or self._next >= len(self.jobs):
                    return None
                if self.refusal is not None:
                    self._refuse_rest(self.refusal)
                    return None
                if self._next >= self._emitted + self.max_in_queue:  # bounded temp disk
                    self._cond.wait(WAIT_TICK_SECONDS)
                    continue
                planned = self.jobs[self._next]
                verdict = self._admit(planned)
                if verdict == "wait":
                    self._cond.wait(WAIT_TICK_SECONDS)
                    continue
                if verdict == "refuse":
                    self.refusal = ExportQuotaExhausted(self.quota.cap_reached(
                        dt.datetime.now(dt.timezone.utc)))
                    continue
                self._next += 1
                return planned

    def _admit(self, planned: PlannedJob) -> Verdict:
        """go, wait or refuse: the quota's word on the next job (cutting it to fit)."""
        earlier = self._earlier_for(planned)
        if earlier is not None:
            whole = planned.spec.label
            self._cut(planned, earlier.end - earlier.start)
            if planned.spec.label != whole:
                logger.info("Export %s: an earlier run's job covers its first part, re-used; "
                            "the rest of the window is one more job.", whole)
            planned.spec = earlier
            planned.reserved = self.quota.reserve(self.quota.estimate(
                planned.size_keys, planned.seconds))
            return "go"
        estimate = self.quota.estimate(planned.size_keys, planned.seconds)
        if estimate is None:
            if self._learning():
                return "wait"  # the probe, or re-used jobs of unknown size, come first
            return self._probe(planned)
        if not self.quota.fits(estimate):
            if self.quota.running:
                return "wait"  # jobs in flight settle at their real size: room may grow
            fits = min(self.quota.seconds_that_fit(planned.size_keys), planned.seconds)
            hours = math.floor(fits / SMALLEST_CUT.total_seconds())
            cut = self.quota.estimate(planned.size_keys, hours * SMALLEST_CUT.total_seconds())
            if hours < 1 or (cut or 0.0) < WORTH_A_JOB * self.quota.cap_bytes:
                return "refuse"  # the day's last crumbs of quota are not worth a job
            self._cut(planned, hours * SMALLEST_CUT)
            logger.info("Export %s: cut to fit the %s left under max_export_mb_per_day; the "
                        "rest of the window is one more job.", planned.spec.label,
                        mb(self.quota.room()))
            estimate = self.quota.estimate(planned.size_keys, planned.seconds)
        planned.reserved = self.quota.reserve(estimate)
        return "go"

    def _probe(self, planned: PlannedJob) -> Verdict:
        """Nothing tells what a window costs: one short window, alone, to learn it. With
        less than half the cap left today, an hour's export instead of a day's."""
        room = self.quota.room()
        if room <= 0:
            return "refuse"
        whole = planned.spec.label
        probe = PROBE if room >= self.quota.cap_bytes / 2 else SMALLEST_CUT
        self._cut(planned, probe + planned.purged_lead())
        if planned.spec.label != whole:
            logger.info("Export %s: no export size is known yet, so its first %s goes alone "
                        "as a probe (the size sets the quota's plan); the rest of the window "
                        "is one more job.", whole, "day" if probe == PROBE else "hour")
        planned.reserved = self.quota.reserve(None)
        return "go"

    def _learning(self) -> bool:
        """A job started is not read yet: its file will teach the quota a size."""
        return any(not p.emitted and not (p.future.done() and p.future.exception())
                   for p in self.jobs[:self._next])

    def _cut(self, planned: PlannedJob, width: dt.timedelta) -> None:
        """Shorten a window from the edge it grows from; the rest becomes the next job."""
        spec = planned.spec
        if spec.end - spec.start <= width:
            return
        if planned.direction == FORWARD:
            kept, rest = replace(spec, end=spec.start + width), replace(spec, start=spec.start
                                                                           + width)
        else:
            kept, rest = replace(spec, start=spec.end - width), replace(spec, end=spec.end
                                                                         - width)
        planned.spec = kept
        index = self.jobs.index(planned)
        self.jobs.insert(index + 1, PlannedJob(rest, planned.streams, planned.direction,
                                               planned.needed_types, kept_from=planned.kept_from))

    def _earlier_for(self, planned: PlannedJob) -> JobSpec | None:
        """An earlier run's job that serves this window (crash recovery), taken once."""
        for export in self.earlier:
            spec = spec_of_export(export, planned.spec)
            if spec is not None and covers(spec, planned):
                self.earlier.remove(export)
                planned.job = self._new_job(spec, str(export["exportId"]))
                return spec
        return None

    def _refuse_rest(self, reason: Exception) -> None:
        for planned in self.jobs[self._next:]:
            if not planned.future.done():
                planned.future.set_exception(reason)
        self._next = len(self.jobs)

    def _new_job(self, spec: JobSpec, export_id: str | None = None) -> ExportJob:
        return ExportJob(client=self.client, spec=spec, workdir=self.workdir,
                         timings=self.timings, stop=self.stop, export_id=export_id,
                         board=self.board, on_created=self._persist)

    def _persist(self, export_id: str) -> None:
        """Before a new job is enqueued (and can spend quota), the state must name it: a
        run killed now re-uses it instead of paying for the same export again."""
        with self._cond:
            self._state_asked += 1
            version = self._state_asked
            while self._state_written < version and not self.stop.is_set():
                self._cond.wait(WAIT_TICK_SECONDS)
        if self.stop.is_set():
            raise Stopped(export_id)

    def _run(self, planned: PlannedJob) -> CompletedExport:
        job = planned.job or self._new_job(planned.spec)
        planned.job = job
        size = None
        enqueued_at = time.monotonic()
        try:
            done = job.run()
            size = 0 if job.completed_before else done.file_size
            with self._cond:
                self._finished_seconds.append(time.monotonic() - enqueued_at)
            logger.info("Export %s: %s of bulk export quota used today by this API user.",
                        planned.spec.label, mb(self.quota.used_bytes + size))
            if self.raw_files_dir:
                kept = keep_raw_file(done, planned.spec, self.raw_files_dir)
                logger.info("Export %s: raw file kept as %s", planned.spec.label, kept)
            return done
        except QuotaExhausted as exc:
            with self._cond:
                self.refusal = self.refusal or exc  # jobs already under way still finish
            raise
        except Stopped:
            raise
        except Exception as exc:
            with self._cond:  # no point spending quota on windows after a gap; those
                self.failure = self.failure or exc  # before it still finish
                self._refuse_rest(exc)
                self._cond.notify_all()
            raise
        finally:
            with self._cond:
                self.quota.settle(planned.reserved, size)
                planned.reserved = 0.0
                self._cond.notify_all()

    # -- the heartbeat ----------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self.stop.wait(self.heartbeat_seconds):
            line = self.heartbeat_line()
            if line:
                logger.info("%s", line)

    def heartbeat_line(self) -> str | None:
        """What the jobs in Marketo are doing, or None when none is."""
        with self._cond:
            jobs = list(self.jobs)
            finished = list(self._finished_seconds)
        now = time.monotonic()
        busy = [(k, p.job) for k, p in enumerate(jobs, 1)
                if p.job is not None and not p.future.done()
                and (p.job.status in RUNNING_STATUSES or p.job.received)]
        if not busy:
            return None
        parts = []
        for number, job in busy:
            what = f"{job.status} for {_duration(now - job.status_since)}"
            if job.received:
                what = f"downloading, {mb(job.received)} so far"
            parts.append(f"job {number} of {len(jobs)} ({job.spec.label}) {what}")
        line = "Waiting on Marketo: " + "; ".join(parts) + "."
        left = sum(1 for p in jobs if not p.future.done())
        if finished:
            average = sum(finished) / len(finished)
            slots = min(2, self.max_in_queue)  # Marketo processes two jobs at a time
            line += (f" {plural(len(finished), 'job')} done in "
                     f"{_duration(average)} on average: about "
                     f"{_duration(average * left / slots)} left.")
        return line

    # -- the end ------------------------------------------------------------------------

    def close(self, wait_seconds: float = 3.0) -> None:
        """Stop starting jobs and cancel ours still in Marketo's queue, within seconds: the
        workers cancel their own; what is left is cancelled side by side, once each."""
        self.stop.set()
        self.client.stopping.set()
        with self._cond:
            self._cond.notify_all()
            ahead = self.jobs[self._next:]
            self._refuse_rest(Stopped("the sync is stopping"))
            # An earlier run's job for a window not reached yet is the next run's.
            later = [e for e in self.earlier if any(
                (spec := spec_of_export(e, p.spec)) is not None and covers(spec, p)
                for p in ahead)]
            unused = [e for e in self.earlier if e not in later]
            self.earlier = later
        running = [p.future for p in self.jobs if p.job and not p.future.done()]
        wait(running, timeout=wait_seconds)
        cancels: list[Callable[[], Any]] = [job.cancel_if_running for job in self.in_flight()]
        cancels += [partial(cancel_export, self.client, str(e["exportId"]), once=True)
                    for e in unused]
        if cancels:
            threads = [threading.Thread(target=cancel, daemon=True) for cancel in cancels]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 5.0
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def exports_to_keep(self) -> list[dict]:
        """Our jobs in Marketo whose file is still needed, to re-use after a crash instead
        of paying for the same export again, and earlier ones not matched yet."""
        with self._cond:
            keep = [dict(e) for e in self.earlier]
            for planned in self.jobs:
                job = planned.job
                if job and job.export_id and not planned.emitted and \
                        job.status in KEPT_STATUSES:
                    keep.append({"exportId": job.export_id, **job.spec.key()})
            return keep

    def in_flight(self) -> list[ExportJob]:
        return [p.job for p in self.jobs if p.job and p.job.status in RUNNING_STATUSES]


def _exported(planned: PlannedJob) -> bool:
    """The job's file is here: its quota is spent (a job that failed or was refused has
    not exported its window)."""
    return planned.future.done() and planned.future.exception() is None


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
