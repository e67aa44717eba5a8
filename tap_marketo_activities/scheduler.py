"""Windows and the job schedule: which export jobs a sync needs, and running them ahead.

Windows line up on one grid for every stream: the grid starts at the earliest stream start
and steps by `window_days`. A stream whose bookmark falls inside a grid window gets one
shorter first window up to the next grid line (shared with every stream of the same
bookmark); from there on it shares the grid windows, and so one job per window serves all
streams. A stream therefore never receives a row from before its own bookmark.

The scheduler keeps up to `max_jobs_in_queue` jobs of ours in Marketo at once, in window
order, so that Marketo's two processing slots stay busy while earlier files become records.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import (
    CancelledError,
    Future,
    ThreadPoolExecutor,
    TimeoutError,
    wait,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tap_marketo_activities.client import MarketoClient, QuotaExhausted, Stopped
from tap_marketo_activities.export import (
    EXPORT_FIELDS,
    FIRST_POLL_SECONDS,
    CompletedExport,
    ExportJob,
    JobSpec,
    JobTimings,
    StatusBoard,
    cancel_export,
    keep_raw_file,
)
from tap_marketo_activities.quota import ExportQuota
from tap_marketo_activities.settings import PrimaryFilter

logger = logging.getLogger(__name__)

WAIT_TICK_SECONDS = 1.0


@dataclass
class PlannedJob:
    spec: JobSpec
    streams: list[str]
    future: Future[CompletedExport] | None = None
    job: ExportJob | None = None
    consumers_left: set[str] = field(default_factory=set)


def export_key(export: Mapping) -> str:
    """All that an export asked for (window, types, fields, format, filter, headers)."""
    return json.dumps({k: v for k, v in export.items() if k != "exportId"}, sort_keys=True)


def grid_windows(
    starts: Mapping[str, dt.datetime], end: dt.datetime, width: dt.timedelta
) -> dict[str, list[tuple[dt.datetime, dt.datetime]]]:
    """Each stream's windows from its start to `end`, aligned on one grid (module doc)."""
    if not starts:
        return {}
    anchor = min(starts.values())
    plans: dict[str, list[tuple[dt.datetime, dt.datetime]]] = {}
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


def plan_jobs(
    starts: Mapping[str, dt.datetime],
    type_ids: Mapping[str, int],
    end: dt.datetime,
    width: dt.timedelta,
    fields: Mapping[str, set[str]] | None = None,
    filters: Mapping[str, PrimaryFilter | None] | None = None,
    **spec_options: Any,
) -> list[PlannedJob]:
    """One job per distinct window, serving every stream that needs that window, asking
    for the columns those streams need (all of them when `fields` is not given). A stream
    with a primary attribute filter gets jobs of its own (Marketo applies a filter to every
    type of a job). `spec_options` go to every JobSpec (format, header names)."""
    by_window: dict[tuple, list[str]] = {}
    for stream, windows in grid_windows(starts, end, width).items():
        primary = (filters or {}).get(stream)
        for window in windows:
            by_window.setdefault((*window, primary and stream), []).append(stream)
    jobs = []
    for (lower, upper, filtered), streams in sorted(by_window.items(), key=_window_order):
        ids = tuple(sorted({type_ids[s] for s in streams}))
        needed = set().union(*(fields[s] for s in streams)) if fields else set(EXPORT_FIELDS)
        columns = tuple(f for f in EXPORT_FIELDS if f in needed)
        primary = (filters or {}).get(filtered) if filtered else None
        spec = JobSpec(lower, upper, ids, columns, primary_filter=primary, **spec_options)
        jobs.append(PlannedJob(spec, sorted(streams), consumers_left=set(streams)))
    return jobs


def _window_order(item: tuple[tuple, list[str]]) -> tuple:
    lower, upper, filtered = item[0]
    return (lower, upper, filtered or "")


class ExportScheduler:
    """Runs planned jobs ahead of the streams that read them, in window order."""

    def __init__(self, client: MarketoClient, jobs: list[PlannedJob], workdir: Path,
                 timings: JobTimings, max_in_queue: int, quota: ExportQuota,
                 earlier_exports: Iterable[Mapping] = (), raw_files_dir: Path | None = None
                 ) -> None:
        self.client = client
        self.raw_files_dir = raw_files_dir
        self.earlier = {export_key(e): dict(e) for e in earlier_exports if "exportId" in e}
        self.jobs = jobs
        self.workdir = workdir
        self.timings = timings
        self.quota = quota
        self.stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max_in_queue,
                                        thread_name_prefix="export")
        self._started = False
        self.board = StatusBoard(client, min(FIRST_POLL_SECONDS, timings.poll_interval))
        self.refusal: QuotaExhausted | None = None
        self.failure: Exception | None = None

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for planned in self.jobs:
            planned.future = self._pool.submit(self._run, planned)

    def windows_of(self, stream: str) -> list[PlannedJob]:
        return [job for job in self.jobs if stream in job.streams]

    def result(self, planned: PlannedJob,
               on_wait: Callable[[PlannedJob], None]) -> CompletedExport:
        """Wait for a job's file, calling `on_wait` now and then. Raises the job's error,
        or for a job stopped on the way, the error that stopped it."""
        self.start()
        assert planned.future is not None
        try:
            while True:
                try:
                    return planned.future.result(timeout=WAIT_TICK_SECONDS)
                except TimeoutError:
                    on_wait(planned)
        except (Stopped, CancelledError):
            if self.failure is not None:
                raise self.failure from None
            raise

    def consumed(self, planned: PlannedJob, stream: str) -> None:
        """A stream is done with a job (its file is removed once split: SharedExports)."""
        planned.consumers_left.discard(stream)

    def close(self, wait_seconds: float = 3.0) -> None:
        """Stop starting jobs and cancel ours still in Marketo's queue, within seconds: the
        workers cancel their own; what is left is cancelled side by side, once each."""
        self.stop.set()
        self.client.stopping.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        running = [p.future for p in self.jobs if p.future and not p.future.done()]
        wait(running, timeout=wait_seconds)
        cancels: list[Callable[[], Any]] = [job.cancel_if_running for job in self.in_flight()]
        if self._all_started():  # an earlier run's jobs that no job of this run matched
            cancels += [lambda e=e: cancel_export(self.client, str(e["exportId"]), once=True)
                        for e in self.earlier.values()]
            self.earlier.clear()
        if cancels:
            cancelling = ThreadPoolExecutor(max_workers=len(cancels))
            wait([cancelling.submit(cancel) for cancel in cancels], timeout=5.0)
            cancelling.shutdown(wait=False)

    def _run(self, planned: PlannedJob) -> CompletedExport:
        if self.stop.is_set():
            raise Stopped(planned.spec.label)
        if self.refusal is not None:
            raise self.refusal  # no new job today; earlier windows still finish
        try:
            reserved = self.quota.reserve(planned.spec)
        except QuotaExhausted as exc:
            self.refusal = exc
            raise
        earlier = self.earlier.pop(export_key(planned.spec.key()), None)
        job = ExportJob(self.client, planned.spec, self.workdir, self.timings, self.stop,
                        earlier and str(earlier["exportId"]), self.board)
        planned.job = job
        size = None
        try:
            done = job.run()
            size = done.file_size
            logger.info("Export %s: %.2f MB of bulk export quota used today by this API user.",
                        planned.spec.label, (self.quota.used_bytes + size) / 1024 / 1024)
            if self.raw_files_dir:
                kept = keep_raw_file(done, planned.spec, self.raw_files_dir)
                logger.info("Export %s: raw file kept as %s", planned.spec.label, kept)
            return done
        except QuotaExhausted as exc:
            self.refusal = exc  # jobs already under way still finish
            raise
        except Stopped:
            raise
        except Exception as exc:
            self.failure = self.failure or exc
            self.stop.set()  # no point spending quota on windows after a gap
            raise
        finally:
            self.quota.settle(planned.spec, reserved, size)

    def exports_to_keep(self) -> list[dict]:
        """Our jobs in Marketo whose file some stream still needs, to re-attach to after a
        crash instead of paying for the same export again."""
        # An earlier run's job no job of this run has matched yet may still match one
        # (crash again before then: keep it); once every job has started, none will.
        keep = list(self.earlier.values()) if not self._all_started() else []
        for planned in self.jobs:
            job = planned.job
            if job and job.export_id and planned.consumers_left and \
                    job.status in ("Created", "Queued", "Processing", "Completed"):
                keep.append({"exportId": job.export_id, **planned.spec.key()})
        return keep

    def _all_started(self) -> bool:
        return all(p.job is not None for p in self.jobs)

    def in_flight(self) -> Iterable[ExportJob]:
        return [p.job for p in self.jobs if p.job and p.job.status in
                ("Created", "Queued", "Processing")]
