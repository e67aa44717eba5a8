"""The coordinator: one run. Plan, carry each road's part out, collect what each did, write
the last state, and say how it went.

The plan (plan.py) decides which streams go which road over which range; the roads
(roads/) read and feed the one record path; the state codec (state.py) keeps our keys
beside the SDK's bookmarks. A road that fails ends with one line and the others go on; the
run then exits 1, with every other stream's progress in the last STATE.

Data flows one way: settings and streams -> plan -> roads (windows, jobs, files, pages)
-> records -> state.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tap_marketo_activities.client import ExportQuotaExhausted, MarketoClient, MarketoError
from tap_marketo_activities.delivery import RecordPath
from tap_marketo_activities.increments import (
    CALLS_PER_READ,
    CallBudget,
    count_daily_usage,
    groups_of,
)
from tap_marketo_activities.instants import isoformat
from tap_marketo_activities.lateness import duration_text, late_line
from tap_marketo_activities.lookback import Lookback
from tap_marketo_activities.output import OutputClosed
from tap_marketo_activities.plan import (
    Read,
    Situation,
    StreamView,
    estimate_calls,
    plan,
    purged,
    purged_parts,
)
from tap_marketo_activities.quota import ExportQuota, mb, reset_text, size_key
from tap_marketo_activities.records import FileRejected
from tap_marketo_activities.retention import retention_of
from tap_marketo_activities.roads import Context
from tap_marketo_activities.roads.bulk import BulkRoad
from tap_marketo_activities.roads.deleted import read_deleted_leads
from tap_marketo_activities.roads.rest import RestRoad
from tap_marketo_activities.scheduler import BACKWARD
from tap_marketo_activities.schema import BULK_ONLY_COLUMNS
from tap_marketo_activities.settings import Settings, parse_instant
from tap_marketo_activities.state import REST_STATE_KEY, SIZES_STATE_KEY
from tap_marketo_activities.streams import LOW_EDGE, ActivityStream
from tap_marketo_activities.text import plural

if TYPE_CHECKING:
    # Typing only: the SDK has no public path for it (tests/test_sdk_contract.py).
    from singer_sdk.helpers._batch import BatchConfig

logger = logging.getLogger(__name__)

RESUME_NAMES_SHOWN = 6  # stream names in a line; the rest are counted
Failure = MarketoError | FileRejected


@dataclass
class Outcome:
    """What a run did, for the summary, and how it ended."""

    jobs: int = 0
    downloaded_bytes: int = 0
    quota_used_bytes: float = 0.0
    plan_line: str | None = None
    purged_line: str | None = None  # how much of the asked range Marketo had deleted
    rest_reads: int = 0
    rest_calls: int = 0
    rest_used_today: int = 0
    rest_budget: int = 0
    late: int = 0  # activities delivered after their second had been read (lookback)
    failure: Exception | None = None  # ends the run: one ERROR line, exit 1
    warning: str | None = None  # a planned stop (a day's quota or budget): exit 0


class OnePass:
    """One run over every road."""

    def __init__(self, *, settings: Settings, client: MarketoClient,
                 streams: list[ActivityStream], state: dict[str, Any],
                 write_state: Callable[[dict[str, Any]], None],
                 batch_config: BatchConfig | None, dry_run: bool) -> None:
        self.settings = settings
        self.state = state  # the whole tap state: every stream's bookmarks and our keys
        self._write_state = write_state
        self._state_in = copy.deepcopy(state)
        self.deleted = [s for s in streams if not s.bulk and s.wanted]
        self.streams = [s for s in streams if s.bulk and s.wanted]
        # Each REST call is in a STATE before it is made (on_reserve): no stop hides one.
        self.budget = CallBudget.from_state(settings.max_rest_calls_per_day,
                                            state.get(REST_STATE_KEY),
                                            dt.datetime.now(dt.timezone.utc),
                                            on_reserve=self.write_state)
        self.final_state = False  # the budget's exact count: the last STATEs of the run
        self.lookback = Lookback(state, self.streams, settings.end, settings.lookback_hours,
                                 dry_run)
        self.path = RecordPath(batch_config, self._on_progress, self.lookback.memory,
                               self.lookback.remember_after, run_end=isoformat(settings.end))
        ctx = Context(settings=settings, client=client, path=self.path,
                      checkpoint=self.write_state, dry_run=dry_run)
        self.ctx = ctx
        self.rest = RestRoad(ctx, self.budget)
        self.bulk = BulkRoad(ctx, self.streams, state)
        self.failures: list[tuple[str, Failure]] = []
        self.warnings: list[str] = []
        self.purged_line: str | None = None

    # -- the run ------------------------------------------------------------------------

    def run(self) -> Outcome:
        """Every road's part; the last state and our jobs' end even when it fails or is
        stopped."""
        log_resume(self.deleted + self.streams, self.settings, self.lookback)
        self.purged_line = self._purged()
        try:
            for stream in self.deleted:
                self._part("Get Deleted Leads", read_deleted_leads, self.ctx, stream)
            if self.settings.rest_increments != "off" and self.streams:
                count_daily_usage(self.ctx.client, self.budget)  # Marketo's count: a floor
            tried = self._rest(self._situation())
            if self.path.open:
                self._bulk(tried)
            if isinstance(self.bulk.failure, ExportQuotaExhausted):
                self._rest_instead_of_bulk()
            self.path.finish()
            if self.lookback.remember_after is not None:
                logger.info("%s", late_line(self.path.late))
        finally:
            self.close()
        return self._outcome()

    def _part(self, name: str, part: Callable[..., None], *args: Any) -> None:
        """One road's part; its failure ends that part only."""
        try:
            part(*args)
        except (MarketoError, FileRejected) as exc:
            logger.debug("%s stopped", name, exc_info=True)
            self.failures.append((name, exc))

    def _situation(self, **changes: Any) -> Situation:
        settings = self.settings
        return Situation(
            streams=tuple(view_of(s, settings, self.lookback.read_from(s))
                          for s in self.streams),
            start=settings.start, end=settings.end,
            width=dt.timedelta(days=settings.window_days),
            newest_first=settings.backfill_order == "newest_first",
            rest_increments=settings.rest_increments, calls_left=self.budget.left(),
            calls_per_hour=self.budget.calls_per_hour,
            remember_after=parse_instant("remember_after", self.path.remember_after)
            if self.path.remember_after else None,
            day_bytes=day_bytes(self.streams, self.state, settings),
            cap_bytes=settings.max_export_bytes_per_day, **changes)

    def _purged(self) -> str | None:
        """One line per retention whose edge cuts what the run asks; a covered range
        reaches down over what Marketo deleted whole. The summary's line."""
        situation = self._situation()
        for name, start, end in purged_parts(situation):
            if not self.ctx.dry_run:
                next(s for s in self.streams if s.name == name).covered(start, end,
                                                                        backward=True)
        groups = purged(situation)
        for group in groups:
            logger.info("%s: %s; nothing before %s can come.", _names(list(group.streams)),
                        group.retention.words(), f"{group.edge:%Y-%m-%d}")
        if not groups:
            return None
        asked = sum((g.asked for g in groups), dt.timedelta())
        gone = sum((g.gone for g in groups), dt.timedelta())
        return (f"Marketo had already deleted {_days(gone)} of the {_days(asked)} asked of "
                f"{plural(sum(len(g.streams) for g in groups), 'stream')} (its retention "
                "policy): nothing of it was asked for.")

    # -- REST ---------------------------------------------------------------------------

    def _rest(self, situation: Situation) -> frozenset[str]:
        """The plan's REST reads, in order; the streams they were for (what a read leaves,
        or a read after a failed one, is bulk's in auto, tomorrow's in always)."""
        reads = plan(situation)
        log_bulk_only(situation)
        if not situation.export_quota_gone:
            self._log_lookback(reads)
        for read in reads:
            if read.road == "wait":
                self._budget_spent(read.start)
            elif read.declined:
                self._log_road(read)
            elif read.road == "rest" and self.path.open and self.rest.failure is None:
                self._log_road(read)
                self.rest.run(read, self._streams_of(read))
                self._after_rest_read(read)
        return frozenset(n for r in reads if r.road == "rest" for n in r.streams)

    def _after_rest_read(self, read: Read) -> None:
        failure = self.rest.failure
        if failure is not None or self.rest.spent:
            edge = self.rest.last_reached or isoformat(read.start)
            for stream in self._streams_of(read):
                self.lookback.stopped_short(stream, edge)
        if failure is not None and self.settings.rest_increments == "auto":
            logger.warning("Get Lead Activities stopped at %s: %s Bulk export takes it from "
                           "there.", self.rest.last_reached or isoformat(read.start), failure)
        elif failure is not None:
            self.failures.append(("Get Lead Activities", failure))
        elif self.rest.spent and self.settings.rest_increments == "auto":
            logger.info("The REST read of %s .. %s reached its call cap at %s; bulk export "
                        "takes it from there.", isoformat(read.start), isoformat(read.end),
                        self.rest.last_reached)

    def _log_road(self, read: Read) -> None:
        road = "Get Lead Activities" if read.road == "rest" else "bulk export"
        what = "Backfill window" if read.direction == BACKWARD else "Increment"
        logger.info("%s %s .. %s for %s: through %s (%s; %d of max_rest_calls_per_day="
                    "%d used today).", what, isoformat(read.start), isoformat(read.end),
                    plural(len(read.streams), "stream"), road, read.why, self.budget.used,
                    self.budget.limit)

    def _log_lookback(self, reads: list[Read]) -> None:
        """What reading the lookback again costs this run, by road (the plan's estimate)."""
        spans = {s.name: self.lookback.lookback_of(s) for s in self.streams}
        reading = [n for n, span in spans.items() if span]
        if not reading:
            return
        costs = []
        calls = self._lookback_calls(reads, spans)
        if calls:
            costs.append(calls)
        size = self._lookback_bytes(reads, spans)
        if size:
            costs.append(size)
        longest = max(spans.values())
        logger.info("Lookback: %s read again from up to %s before %s bookmark "
                    "(lookback_hours=%d), for activities Marketo records late; %s. The "
                    "memory of what was delivered holds %s.", plural(len(reading), "stream"),
                    duration_text(longest.total_seconds()),
                    "its" if len(reading) == 1 else "their", self.settings.lookback_hours,
                    " and ".join(costs) or "no extra cost",
                    plural(len(self.lookback.memory), "activity"))

    def _lookback_calls(self, reads: list[Read], spans: dict[str, dt.timedelta]) -> str:
        rest = [r for r in reads if r.road == "rest" and any(spans.get(n) for n in r.streams)]
        if not rest:
            return ""
        rate = self.budget.calls_per_hour
        if rate is None:
            return "through Get Lead Activities, cost not learnt yet"
        types = {s.name: s.type_id for s in self.streams}
        extra = 0
        for read in rest:
            groups = len(groups_of([types[n] for n in read.streams]))
            span = max(spans.get(n, dt.timedelta()) for n in read.streams)
            extra += (estimate_calls(rate, span, groups) or 0) - CALLS_PER_READ * groups
        return f"about {plural(max(extra, 0), 'call')} of Get Lead Activities"

    def _lookback_bytes(self, reads: list[Read], spans: dict[str, dt.timedelta]) -> str:
        bulk = [n for r in reads if r.road == "bulk" and not r.declined for n in r.streams
                if spans.get(n)]
        if not bulk:
            return ""
        rates = day_bytes(self.streams, self.state, self.settings)
        if any(name not in rates for name in bulk):
            return "in the first export window, size not learnt yet"
        total = sum(rates[name] * (spans[name] / dt.timedelta(days=1)) for name in bulk)
        return f"about {mb(total)} more in the first export window"

    def _budget_spent(self, reached: dt.datetime) -> None:
        resets = reset_text(dt.datetime.now(dt.timezone.utc))
        line = (f"max_rest_calls_per_day ({self.budget.limit}) is reached for today: the "
                f"increment is delivered up to {isoformat(reached)}, and the next run after "
                f"the reset ({resets}) goes on from there; raise max_rest_calls_per_day to "
                "read more a day.")
        if line not in self.warnings:
            self.warnings.append(line)

    def _streams_of(self, read: Read) -> list[ActivityStream]:
        return [s for s in self.streams if s.name in read.streams]

    # -- bulk ---------------------------------------------------------------------------

    def _bulk(self, tried: frozenset[str]) -> None:
        """What REST did not cover: ranges too big for it, streams it cannot serve, and
        what a REST read left (auto)."""
        reads = plan(self._situation(rest_tried=tried))
        if self.rest.failure is None:
            for read in reads:
                if read.road == "wait":
                    self._budget_spent(read.start)
        self.bulk.run([r for r in reads if r.road == "bulk" and not r.declined])
        if self.bulk.failure is not None and \
                not isinstance(self.bulk.failure, ExportQuotaExhausted):
            self.failures.append(("bulk export", self.bulk.failure))

    def _rest_instead_of_bulk(self) -> None:
        """The day's export quota is gone: what the call budget covers of the increments
        goes through Get Lead Activities instead of waiting for midnight."""
        if self.settings.rest_increments == "off" or self.budget.left() <= 0 or \
                not self.path.open:
            return
        logger.info("The export quota is gone for today: the increment goes on through Get "
                    "Lead Activities, within max_rest_calls_per_day.")
        tried = self._rest(self._situation(export_quota_gone=True))
        left = plan(self._situation(export_quota_gone=True, rest_tried=tried))
        if not any(r.road == "bulk" for r in left):
            self.bulk.failure = None  # REST took everything bulk could not

    # -- state --------------------------------------------------------------------------

    def write_state(self) -> None:
        """One STATE: every stream's bookmark, the REST budget, our jobs still needed and
        the learnt sizes."""
        self.state[REST_STATE_KEY] = self.budget.saved(final=self.final_state)
        if not self.ctx.dry_run:
            self.lookback.settle(self.streams, self.state)
        version = self.bulk.state_part(self.state)
        if not self.ctx.dry_run:  # --test leaves no state that a run would start from
            # A target that stopped reading ends the run (OutputClosed): exporting on for
            # nobody would spend quota on windows the next run must export again.
            self._write_state(self.state)
        self.bulk.state_written(version)

    def _on_progress(self) -> None:
        """Now and then while rows are written: a new job may wait for the state to name it
        before it is enqueued."""
        if self.bulk.state_wanted():
            self.write_state()

    # -- the end ------------------------------------------------------------------------

    def close(self) -> None:
        """The state first (what matters if we are killed next), then our jobs in Marketo
        are cancelled, then the state again without them; on every exit."""
        self.final_state = True
        self.bulk.stop()
        try:
            with contextlib.suppress(OutputClosed):
                self.write_state()
        finally:
            self.bulk.close()
        with contextlib.suppress(OutputClosed):
            self.write_state()
            if self.ctx.dry_run:  # one STATE, as it came: a run started from it loses nothing
                self._write_state(self._state_in)
        if sys.stderr.isatty():
            sys.stderr.write("\033[K")

    def _outcome(self) -> Outcome:
        bulk = self.bulk
        outcome = Outcome(downloaded_bytes=bulk.bytes_downloaded, plan_line=bulk.plan_line(),
                          purged_line=self.purged_line,
                          rest_reads=self.rest.reads_made, rest_calls=self.budget.run_calls,
                          rest_used_today=self.budget.used, rest_budget=self.budget.limit,
                          late=len(self.path.late))
        if bulk.scheduler is not None:
            outcome.jobs = sum(1 for p in bulk.scheduler.jobs if p.job is not None)
            outcome.quota_used_bytes = bulk.scheduler.quota.used_bytes
        if isinstance(bulk.failure, ExportQuotaExhausted):
            if bulk.windows_delivered or self.rest.reads_done:
                self.warnings.append(self.stop_line(bulk.failure))  # goes on tomorrow
            else:
                self.failures.append(("bulk export",
                                      ExportQuotaExhausted(self.stop_line(bulk.failure))))
        outcome.warning = " ".join(self.warnings) or None
        for name, failure in self.failures[:-1]:
            logger.error("%s: %s", name, failure)
        if self.failures:
            outcome.failure = self.failures[-1][1]
        return outcome

    def stop_line(self, reason: ExportQuotaExhausted) -> str:
        """What a run stopped by the export quota did today, what is left, and when the
        quota resets (UTC and US Central)."""
        line = str(reason)
        if "UTC" not in line:
            line += f" The quota resets at {reset_text(dt.datetime.now(dt.timezone.utc))}."
        scheduler = self.bulk.scheduler
        left = scheduler.left_bytes() if scheduler else None
        left_text = f"about {mb(left)}" if left is not None else "an unknown amount"
        if self.bulk.windows_delivered:
            used = scheduler.quota.used_by_run if scheduler else 0
            done = (f"This run delivered {plural(self.bulk.windows_delivered, 'window')} and "
                    f"exported {mb(used)}")
        else:
            done = "Nothing could be exported today"
        if self.rest.reads_done:
            done += (f"; {plural(self.rest.reads_done, 'increment')} came through Get Lead "
                     "Activities")
        return f"{line} {done}; {left_text} is left to export."


# -- what the plan sees, and the lines that say where a run starts ---------------------------

def view_of(stream: ActivityStream, settings: Settings, read_from: dt.datetime | None = None
            ) -> StreamView:
    """The plan's view of a stream; its forward read starts at `read_from` (the lookback),
    else at its bookmark."""
    low = stream.stream_state.get(LOW_EDGE)
    return StreamView(name=stream.name, type_id=stream.type_id,
                      bookmark=read_from or stream.high_edge(),
                      covered_from=parse_instant("bookmark", low) if low else None,
                      bulk_only=bulk_only_reason(stream, settings),
                      retention=retention_of(stream.type_id, stream.name,
                                             settings.retention_months))


def day_bytes(streams: list[ActivityStream], state: dict[str, Any], settings: Settings
              ) -> dict[str, float]:
    """What a day of each stream's activities exports, from the sizes learnt (none while
    nothing is learnt): the pace of a backfill."""
    quota = ExportQuota(settings.max_export_bytes_per_day, 0, state.get(SIZES_STATE_KEY))
    found = {}
    for stream in streams:
        rate = quota.bytes_per_day([size_key(stream.type_id, stream.export_fields())])
        if rate is not None:
            found[stream.name] = rate
    return found


def bulk_only_reason(stream: ActivityStream, settings: Settings) -> str:
    """Why Get Lead Activities cannot serve this stream, or ""."""
    columns = sorted(stream.selected_columns() & BULK_ONLY_COLUMNS)
    if columns:
        return f"selects {' and '.join(columns)}"
    if stream.type_id in settings.primary_filters:
        return "has a primary_attribute_filters entry"
    return ""


def log_bulk_only(situation: Situation) -> None:
    """Once a run: the streams REST cannot serve, by reason."""
    if situation.rest_increments == "off" or situation.export_quota_gone:
        return
    reasons: dict[str, list[str]] = {}
    for view in situation.streams:
        if view.bulk_only:
            reasons.setdefault(view.bulk_only, []).append(view.name)
    for reason, names in sorted(reasons.items()):
        if len(names) == 1:
            logger.info("%s %s, which Get Lead Activities cannot serve: it is read through "
                        "bulk export.", names[0], reason)
            continue
        plural_reason = reason.replace("selects", "select", 1).replace("has", "have", 1)
        logger.info("%d streams %s, which Get Lead Activities cannot serve: they are read "
                    "through bulk export: %s.", len(names), plural_reason, _names(names))


def log_resume(streams: list[ActivityStream], settings: Settings,
               lookback: Lookback | None = None) -> None:
    """Where each stream resumes, one line per starting point."""
    points: dict[str, list[str]] = {}
    for stream in streams:
        high = stream.high_edge()
        point = (f"{isoformat(stream.start_instant(settings))} (its bookmark)" if high
                 else f"{isoformat(settings.start)} (start_date: no bookmark yet)")
        span = lookback.lookback_of(stream) if lookback and stream.bulk else None
        if span:
            point += f", reading again from {duration_text(span.total_seconds())} before it"
        low = stream.stream_state.get(LOW_EDGE)
        if low and high and low > isoformat(settings.start):
            point += f", and back from {low} (newest_first)"
        points.setdefault(point, []).append(stream.name)
    for point, names in sorted(points.items()):
        logger.info("Resuming %s at %s: %s.", plural(len(names), "stream"), point,
                    _names(names))


def _days(span: dt.timedelta) -> str:
    return plural(round(span / dt.timedelta(days=1)), "day")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:RESUME_NAMES_SHOWN])
    if len(names) > RESUME_NAMES_SHOWN:
        shown += f" and {len(names) - RESUME_NAMES_SHOWN} more"
    return shown
