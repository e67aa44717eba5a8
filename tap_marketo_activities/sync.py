"""The one pass: each window's export file becomes the records of every stream it serves.

Marketo's unit of work is the window (one file holds every selected type); the SDK's is the
stream. Here each row, as the file is read, is handed to its own stream's SDK record loop
(`Stream._sync_records`, driven one record at a time), so records of different streams
interleave on stdout and nothing is kept on disk but the files in flight. When a window is
done, the bookmark of every stream it served moves, in one STATE message.

Data flows one way: settings and streams -> windows (`plan`) -> jobs (scheduler) -> file
(export) -> records (records) -> state (here).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from singer_sdk.batch import Batcher
from singer_sdk.exceptions import AbortedSyncFailedException, AbortedSyncPausedException

from tap_marketo_activities.client import MarketoError, QuotaExhausted
from tap_marketo_activities.export import CompletedExport, JobTimings, used_today
from tap_marketo_activities.output import OutputClosed
from tap_marketo_activities.quota import MB, ExportQuota, mb, reset_text
from tap_marketo_activities.records import (
    FileRejected,
    Problems,
    RecordBuilder,
    check_whole,
    read_records,
)
from tap_marketo_activities.scheduler import (
    BACKWARD,
    FORWARD,
    ExportScheduler,
    PlannedJob,
    plan_jobs,
)
from tap_marketo_activities.schema import KEY, REPLICATION_KEY
from tap_marketo_activities.settings import Settings, isoformat
from tap_marketo_activities.streams import ActivityStream
from tap_marketo_activities.workdir import RunFolder

if TYPE_CHECKING:
    # Typing only: the SDK has no public path for it (tests/test_sdk_contract.py).
    from singer_sdk.helpers._batch import BatchConfig

    from tap_marketo_activities.tap import TapMarketoActivities

logger = logging.getLogger(__name__)

EXPORTS_STATE_KEY = "marketo_exports"  # our jobs still in Marketo, to re-use after a crash
SIZES_STATE_KEY = "marketo_export_sizes"  # bytes per day per type, learnt from exports
STATE_CHECK_ROWS = 1024  # how often the record loop looks whether a new job needs the state
ABORTED = (AbortedSyncPausedException, AbortedSyncFailedException)  # --test's record limit


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


class StreamMapFailed(Exception):
    """A stream map or flattening failed on a record: the user's expression, not Marketo."""

    def __init__(self, stream: str, error: Exception) -> None:
        super().__init__(stream, error)
        self.stream, self.error = stream, error

    def __str__(self) -> str:
        return (f"{self.stream}: the stream map failed on a record ({type(self.error).__name__}: "
                f"{self.error}). Check stream_maps for this stream; nothing of the window was "
                "bookmarked, so the next run delivers it again.")


def drain(stream: ActivityStream) -> None:
    """A stream that fetches its own records (deleted leads): the SDK's record loop, whole."""
    stream._write_schema_message()
    try:
        for _ in stream._sync_records():
            pass
    except ABORTED:
        pass  # --test's record limit


class StreamFeed:
    """One stream's SDK record loop, handed one record at a time."""

    def __init__(self, stream: ActivityStream, batch_config: BatchConfig | None) -> None:
        self.stream = stream
        self.batches = Batches(stream, batch_config) if batch_config else None
        self.loop: Iterator[dict] = stream._sync_records(write_messages=self.batches is None)
        self.open = True  # False once --test's record limit ended it
        self.window_records = 0

    def finish(self) -> None:
        """The SDK's end of a stream: its final state and record count."""
        if self.open:
            self.stream.fed = None
            try:
                for _ in self.loop:
                    pass
            except ABORTED:
                pass
            self.open = False
        if self.batches:
            self.batches.close()


class Batches:
    """BATCH messages for one stream: records go to the SDK's batch files, flushed at the
    batch size and at the end of each window (before its bookmark moves)."""

    def __init__(self, stream: ActivityStream, config: BatchConfig) -> None:
        self.stream = stream
        self.config = config
        self.batcher = Batcher(stream.tap_name, stream.name, config)
        self.records: list[dict] = []
        self.counter = stream.get_batch_counter()
        self.counter.__enter__()

    def add(self, record: dict) -> None:
        self.records.append(record)
        if len(self.records) >= self.config.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.records:
            return
        for manifest in self.batcher.get_batches(records=iter(self.records)):
            self.stream._write_batch_message(encoding=self.config.encoding, manifest=manifest)
            self.counter.increment()
        self.records = []

    def close(self) -> None:
        self.counter.__exit__(None, None, None)


class OnePass:
    """The bulk part of one sync: every window's file read once for all its streams."""

    def __init__(self, tap: TapMarketoActivities, streams: list[ActivityStream]) -> None:
        self.tap = tap
        self.settings = tap.effective_settings
        self.streams = [s for s in streams if s.bulk and s.wanted]
        self.stop_reason: MarketoError | FileRejected | None = None
        self.windows_delivered = 0
        self.bytes_downloaded = 0
        self.scheduler: ExportScheduler | None = None
        self.folder: RunFolder | None = None
        self.feeds: dict[str, StreamFeed] = {}
        self._edges: dict[str, set[str]] = {}  # window edge -> GUIDs delivered on it
        self._plan_logged = False
        self._waiting_since: dict[int, float] = {}

    # -- the run ------------------------------------------------------------------------

    def run(self) -> None:
        if not self.streams:
            return
        jobs = plan(self.streams, self.settings)
        self._log_plan(jobs)
        if not jobs:
            return
        self.scheduler = self._scheduler(jobs)
        self._log_plan_line()  # sizes known from earlier runs: the plan before any export
        batch_config = self.streams[0].get_batch_config(self.tap.config)
        for stream in self.streams:
            stream._write_schema_message()
            self.feeds[stream.name] = StreamFeed(stream, batch_config)
        self.scheduler.start()
        index = 0
        while (planned := self.scheduler.job_at(index)) is not None:
            if not self._window(planned):
                break
            index += 1
        for feed in self.feeds.values():
            feed.finish()

    def _scheduler(self, jobs: list[PlannedJob]) -> ExportScheduler:
        settings, client = self.settings, self.tap.client
        now = dt.datetime.now(dt.timezone.utc)
        quota = ExportQuota(settings.max_export_bytes_per_day, used_today(client, now),
                            self.tap.raw_state.get(SIZES_STATE_KEY))
        logger.info("Bulk export quota: %s used today by this API user; this tap stops "
                    "before %s (max_export_mb_per_day).", mb(quota.used_bytes),
                    mb(quota.cap_bytes))
        self.folder = RunFolder()
        timings = JobTimings(settings.poll_interval, settings.job_timeout,
                             settings.max_job_attempts)
        return ExportScheduler(client, jobs, self.folder.path, timings,
                               settings.max_jobs_in_queue, quota,
                               self.tap.raw_state.get(EXPORTS_STATE_KEY) or [],
                               settings.raw_files_dir, settings.heartbeat_seconds)

    def _window(self, planned: PlannedJob) -> bool:
        """Deliver one window to every stream it serves; False: stop here."""
        assert self.scheduler is not None
        try:
            done = self.scheduler.result(planned, self._on_wait)
            sizes = self._emit(planned, done)
        except (MarketoError, FileRejected) as exc:
            # Windows already delivered keep their state; the sync ends with this error
            # as one line (tap.sync_all), or a warning for a day's quota.
            if isinstance(exc, FileRejected) and planned.job is not None:
                planned.job.status = "Rejected"  # not kept in the state: the next run asks anew
            self.stop_reason = exc
            logger.debug("Stopping before %s", planned.spec.label, exc_info=True)
            return False
        self._end_window(planned, sizes)
        return any(feed.open for feed in self.feeds.values())  # --test: all have one

    def _emit(self, planned: PlannedJob, done: CompletedExport) -> dict[int, int]:
        """Every row of the window's file, as a record of its stream. Returns rows per type."""
        feeds = {self.feeds[name].stream.type_id: self.feeds[name] for name in planned.streams
                 if name in self.feeds}
        builders: dict[int, RecordBuilder | None] = {t: None for t in planned.spec.type_ids}
        feed_of: dict[RecordBuilder, StreamFeed] = {}
        for type_id, feed in feeds.items():
            if type_id in planned.needed_types:
                builder = feed.stream.builder()
                builders[type_id] = builder
                feed_of[builder] = feed
                feed.window_records = 0
                feed.stream.extracted_at = dt.datetime.now(dt.timezone.utc)
        problems = Problems(f"export {done.export_id}")
        rows = read_records(done.path, planned.spec.export_format, builders, problems,
                            dict(planned.spec.header_names), planned.spec.fields)
        self._feed(rows, feed_of, isoformat(planned.spec.start), isoformat(planned.spec.end))
        check_whole(problems, done.records)
        if problems.counts:
            logger.warning("Export %s had problems: %s", done.export_id, problems.summary())
        self.bytes_downloaded += done.file_size
        return {feed.stream.type_id: feed.window_records for feed in feed_of.values()}

    def _feed(self, rows: Iterator[tuple[RecordBuilder, dict[str, Any]]],
              feed_of: dict[RecordBuilder, StreamFeed], lower: str, upper: str) -> None:
        """The record path: each row to its stream's SDK loop, as the file is read."""
        edges = self._edges
        scheduler = self.scheduler
        assert scheduler is not None
        count = 0
        feed: StreamFeed | None = None
        while True:
            try:
                for builder, record in rows:
                    feed = feed_of[builder]
                    stamp = record[REPLICATION_KEY]
                    # An inclusive endAt hands a boundary second to the windows on both sides.
                    if stamp in (lower, upper):
                        seen = edges.setdefault(stamp, set())
                        if record[KEY] in seen:
                            continue
                        seen.add(record[KEY])
                    if not feed.open:
                        continue
                    feed.stream.fed = record
                    out = next(feed.loop)
                    feed.window_records += 1
                    if feed.batches is not None:
                        feed.batches.add(out)
                    count += 1
                    if not count % STATE_CHECK_ROWS and scheduler.state_wanted():
                        self.write_state()
                return
            except ABORTED:
                assert feed is not None
                feed.open = False  # --test's one record per stream is out
            except (OutputClosed, MarketoError, FileRejected):
                raise
            except Exception as exc:
                if feed is None or feed.stream.plain_output:
                    raise
                raise StreamMapFailed(feed.stream.name, exc) from exc

    def _end_window(self, planned: PlannedJob, sizes: dict[int, int]) -> None:
        assert self.scheduler is not None
        backward = planned.direction == BACKWARD
        feeds = [self.feeds[name] for name in planned.streams if name in self.feeds]
        for feed in feeds:
            if feed.batches:
                feed.batches.flush()  # the BATCH message before the state that covers it
            if not self.tap.dry_run:
                feed.stream.covered(planned.spec.start, planned.spec.end, backward=backward)
            feed.stream.records_written += feed.window_records
        self.scheduler.emitted(planned, sizes)
        self.windows_delivered += 1
        self.write_state()
        total = sum(feed.window_records for feed in feeds)
        logger.info("Window %s .. %s: %d record%s for %d stream%s; delivered.",
                    isoformat(planned.spec.start), isoformat(planned.spec.end), total,
                    "" if total == 1 else "s", len(feeds), "" if len(feeds) == 1 else "s")
        self._log_plan_line()

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
        if self.scheduler is None:
            return
        version, exports = self.scheduler.exports_for_state()
        state = self.tap.raw_state
        if exports:
            state[EXPORTS_STATE_KEY] = exports
        else:
            state.pop(EXPORTS_STATE_KEY, None)
        state[SIZES_STATE_KEY] = self.scheduler.quota.saved_rates()
        if not self.tap.dry_run:  # --test leaves no state that a run would start from
            # A target that stopped reading ends the run (OutputClosed): exporting on for
            # nobody would spend quota on windows the next run must export again.
            self.tap.state_writer.write_state(self.tap.state)
        self.scheduler.state_written(version)

    def _on_wait(self, planned: PlannedJob) -> None:
        assert self.scheduler is not None
        if self.scheduler.state_wanted():
            self.write_state()
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

    def quota_day_over(self) -> bool:
        """Stopped by the day's export quota (ours or Marketo's) after delivering something:
        the backfill goes on tomorrow, and a scheduler should not see a failure."""
        return isinstance(self.stop_reason, QuotaExhausted) and \
            self.stop_reason.code != "607" and self.windows_delivered > 0

    def plan_line(self) -> str | None:
        if self.scheduler is None:
            return None
        left = self.scheduler.left_bytes()
        if left is None:
            return None
        return self.scheduler.quota.plan_line(left, len(self.streams),
                                              dt.datetime.now(dt.timezone.utc))

    def quota_gone(self) -> bool:
        """Stopped by the day's export quota before delivering anything."""
        return isinstance(self.stop_reason, QuotaExhausted) and \
            self.stop_reason.code != "607" and self.windows_delivered == 0

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
            done = (f"This run delivered {self.windows_delivered} window"
                    f"{'s' if self.windows_delivered != 1 else ''} and exported {mb(used)}")
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
        logger.info("Planned %d export window%s for %d stream%s, %s .. %s (window_days=%d, up "
                    "to %d jobs in Marketo's queue at once, %s).", len(jobs),
                    "" if len(jobs) == 1 else "s", len(self.streams),
                    "" if len(self.streams) == 1 else "s", isoformat(first),
                    isoformat(settings.end), settings.window_days, settings.max_jobs_in_queue,
                    settings.backfill_order.replace("_", " "))

    def summary_rows(self) -> tuple[int, float, float]:
        """Jobs, MB downloaded, MB of quota used today."""
        if self.scheduler is None:
            return 0, 0.0, 0.0
        jobs = sum(1 for p in self.scheduler.jobs if p.job is not None)
        return jobs, self.bytes_downloaded / MB, self.scheduler.quota.used_bytes / MB
