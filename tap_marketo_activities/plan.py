"""The plan: which streams, which range, which road, and why, for one run.

One pure function from what a run knows before it reads anything (the selected streams and
how they are selected, their bookmarks, today's REST call budget and the learnt cost of a
read, whether the export quota is gone, the time) to the reads of the run. The roads carry
the reads out; nothing here does I/O, so a table of cases tests every corner
(tests/test_plan.py).

- A stream that Get Lead Activities cannot serve (it selects `actionResult`, or has a
  `primary_attribute_filters` entry) goes through bulk export.
- `rest_increments: auto` reads a forward increment through REST when its cost fits (learnt,
  or, not learnt yet, a span of at most a day tried with a few hundred calls); `always`
  reads everything through REST, newest first where `backfill_order` says so, and waits for
  tomorrow's budget when today's is spent; `off` never.
- Streams at nearby bookmarks share a read, from the oldest of them, where that costs fewer
  calls (REST) or jobs (bulk); each stream takes only what lies past its own bookmark.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from tap_marketo_activities.delivered import REMEMBER_SPAN
from tap_marketo_activities.increments import (
    AUTO_MAX_CALLS,
    CALLS_PER_READ,
    UNKNOWN_COST_CALLS,
    UNKNOWN_COST_SPAN,
    groups_of,
)
from tap_marketo_activities.scheduler import BACKWARD, FORWARD

Road = Literal["rest", "bulk", "wait"]
# Bulk: streams whose bookmarks lie this close share their first window (one job instead
# of one per bookmark); the later ones' rows of the gap are exported once more and skipped.
BULK_SHARE_SPAN = dt.timedelta(days=1)


@dataclass(frozen=True)
class StreamView:
    """What the plan needs of a stream."""

    name: str
    type_id: int
    bookmark: dt.datetime | None = None  # everything before it is delivered
    covered_from: dt.datetime | None = None  # a newest-first backfill reached down to here
    bulk_only: str = ""  # why Get Lead Activities cannot serve it, or ""


@dataclass(frozen=True)
class Situation:
    """Everything the plan decides from."""

    streams: tuple[StreamView, ...]
    start: dt.datetime
    end: dt.datetime
    width: dt.timedelta  # window_days
    newest_first: bool = False
    rest_increments: str = "auto"
    calls_left: int = 0  # of max_rest_calls_per_day, today
    calls_per_hour: float | None = None  # per group of types, learnt from earlier reads
    export_quota_gone: bool = False  # bulk cannot export today: REST is the only road
    rest_tried: frozenset[str] = frozenset()  # streams whose REST reads this run has run
    # The lookback's memory keeps every record of a read that ends after this instant: a
    # forward REST read from long before it is cut there (delivered.REMEMBER_SPAN).
    remember_after: dt.datetime | None = None


@dataclass(frozen=True)
class Read:
    """One read of the run: these streams, [start, end), through this road, and why."""

    road: Road
    streams: tuple[str, ...]
    start: dt.datetime
    end: dt.datetime
    why: str
    direction: str = FORWARD
    cap: int = 0  # REST: the calls this read may take
    estimate: int | None = None  # REST: the calls it should take, when the cost is learnt
    floors: Mapping[str, dt.datetime] = field(default_factory=dict)  # each stream's own start
    # A REST read that its cost or the budget turned down: said in the log; bulk reads
    # carry its range.
    declined: bool = False

    def floor(self, stream: str) -> dt.datetime:
        """Where this stream's rows begin: a stream sharing a read from an older bookmark
        takes only what lies past its own."""
        return self.floors.get(stream, self.start)


@dataclass(frozen=True)
class _Part:
    """A stream's range still to read, before roads are chosen."""

    stream: StreamView
    start: dt.datetime
    end: dt.datetime
    direction: str


def plan(situation: Situation) -> list[Read]:
    """The reads of this run: REST reads first (they take seconds), then bulk, each road's
    reads in the order they are delivered."""
    rest_parts, bulk_parts, waiting = _roads(situation, _parts(situation))
    reads = _rest_reads(situation, rest_parts)
    if waiting:
        reads.append(_wait(situation, waiting))
    moved = [p for r in reads if r.declined for p in _parts_of(r, rest_parts)]
    return reads + _bulk_reads(situation, bulk_parts + moved)


def estimate_calls(calls_per_hour: float | None, span: dt.timedelta, groups: int) -> int | None:
    """Calls a REST read of `span` for `groups` groups of types takes, or None: not learnt."""
    if calls_per_hour is None:
        return None
    hours = span.total_seconds() / 3600
    return groups * (math.ceil(hours * calls_per_hour) + CALLS_PER_READ)


# -- what is left to read -----------------------------------------------------------------

def _parts(s: Situation) -> list[_Part]:
    """Each stream's ranges to read: forward from its bookmark (or start_date) to the end,
    and backward below what a newest-first backfill covered."""
    parts = []
    for stream in s.streams:
        if stream.bookmark is None:
            if s.start < s.end:
                parts.append(_Part(stream, s.start, s.end,
                                   BACKWARD if s.newest_first else FORWARD))
            continue
        forward_from = max(stream.bookmark, s.start)
        if forward_from < s.end:
            parts.append(_Part(stream, forward_from, s.end, FORWARD))
        low = max(s.start, stream.covered_from) if stream.covered_from else s.start
        if low > s.start:
            parts.append(_Part(stream, s.start, min(low, s.end), BACKWARD))
    return parts


def _roads(s: Situation, parts: list[_Part]) -> tuple[list[_Part], list[_Part], list[_Part]]:
    """(parts REST may take, parts for bulk, parts that wait for tomorrow's budget)."""
    rest: list[_Part] = []
    bulk: list[_Part] = []
    waiting: list[_Part] = []
    mode = s.rest_increments
    for part in parts:
        if mode == "off" or part.stream.bulk_only:
            bulk.append(part)
        elif part.stream.name in s.rest_tried:
            # This run's REST read of the stream has run: auto hands what it left to bulk;
            # always (and a day without export quota) waits for tomorrow's budget.
            (waiting if mode == "always" or s.export_quota_gone else bulk).append(part)
        elif mode == "always" or part.direction == FORWARD:
            rest.append(part)
        else:
            bulk.append(part)  # auto reads increments only: the older part is bulk's
    return rest, bulk, waiting


def _parts_of(read: Read, parts: list[_Part]) -> list[_Part]:
    return [p for p in parts if p.stream.name in read.streams
            and p.direction == read.direction and read.start <= p.start < read.end]


# -- REST ---------------------------------------------------------------------------------

def _rest_reads(s: Situation, parts: list[_Part]) -> list[Read]:
    """Shared reads, forward ones first, each with its cap from what is left of today's
    budget; a read the budget cannot take goes to bulk (auto) or waits (always)."""
    left = s.calls_left
    reads = []
    candidates = _shared_rest(s, [p for p in parts if p.direction == FORWARD])
    candidates += _backward_rest(s, [p for p in parts if p.direction == BACKWARD])
    for read in candidates:
        estimate = estimate_calls(s.calls_per_hour, read.end - read.start, _groups(s, read))
        cap, why = _rest_cap(s, left, read.end - read.start, estimate)
        if cap is None:
            road: Road = "wait" if s.rest_increments == "always" or s.export_quota_gone \
                else "bulk"
            reads.append(replace(read, road=road, why=why, estimate=estimate,
                                 declined=road == "bulk"))
            continue
        # What the read should take; a read of unknown cost under `always` may take what
        # is left, and the budget itself stops it (increments.CallBudget).
        left -= estimate if estimate is not None else \
            0 if s.rest_increments == "always" or s.export_quota_gone else cap
        reads += _cut_for_memory(s, replace(read, cap=cap, why=why, estimate=estimate))
    return reads


def _rest_cap(s: Situation, left: int, span: dt.timedelta, estimate: int | None
              ) -> tuple[int | None, str]:
    """The calls a REST read may take (None: not through REST), and why."""
    if left <= 0:
        return None, f"no call left of max_rest_calls_per_day today ({_mode(s)})"
    if s.rest_increments == "always" or s.export_quota_gone:
        why = "the export quota is gone for today" if s.export_quota_gone else \
            "rest_increments: always"
        return left, why
    cap = min(left, AUTO_MAX_CALLS)
    if estimate is None:
        if span <= UNKNOWN_COST_SPAN:
            return min(cap, UNKNOWN_COST_CALLS), "cost not learnt yet: a first try"
        return None, (f"cost not learnt yet, and {_span(span)} is more than the "
                      f"{_span(UNKNOWN_COST_SPAN)} a first try reads")
    if estimate <= cap:
        return cap, f"about {estimate} calls"
    return None, f"about {estimate} calls, more than the {cap} a read may take"


def _shared_rest(s: Situation, parts: list[_Part]) -> list[Read]:
    """Forward parts as reads: parts at one bookmark read together, and a later bookmark
    joins an older read where one read costs fewer calls than two (a read walks every
    type's activities of its range, once per group of ten types) and the budget takes the
    joint read, or would take neither."""
    reads: list[Read] = []
    for start, cohort in sorted(_cohorts(parts).items()):
        names = tuple(p.stream.name for p in cohort)
        read = Read("rest", names, start, s.end, "", floors={n: start for n in names})
        if reads and _cheaper_together(s, reads[-1], read):
            last = reads[-1]
            reads[-1] = replace(last, streams=last.streams + names,
                                floors={**last.floors, **read.floors})
        else:
            reads.append(read)
    return reads


def _cut_for_memory(s: Situation, read: Read) -> list[Read]:
    """A REST read from more than REMEMBER_SPAN before `remember_after` as two, each within
    the read's cap: the memory keeps only the second's records (a read by commit time may
    hand any of them over again)."""
    cut = s.remember_after
    if cut is None or not read.start < cut - REMEMBER_SPAN or not cut < read.end:
        return [read]
    later = {n: max(f, cut) for n, f in read.floors.items()}
    return [replace(read, end=cut), replace(read, start=cut, floors=later)]


def _cheaper_together(s: Situation, older: Read, newer: Read) -> bool:
    rate = s.calls_per_hour if s.calls_per_hour is not None else 1.0
    together = replace(older, streams=older.streams + newer.streams)
    if _fits(s, newer) and not _fits(s, together):
        return False  # the newer read alone takes REST; together they would go to bulk

    def cost(read: Read) -> float:
        return _groups(s, read) * ((read.end - read.start).total_seconds() / 3600 * rate +
                                   CALLS_PER_READ)

    return cost(together) <= cost(older) + cost(newer)


def _fits(s: Situation, read: Read) -> bool:
    estimate = estimate_calls(s.calls_per_hour, read.end - read.start, _groups(s, read))
    return _rest_cap(s, s.calls_left, read.end - read.start, estimate)[0] is not None


def _groups(s: Situation, read: Read) -> int:
    return len(groups_of([_type(s, n) for n in read.streams]))


def _backward_rest(s: Situation, parts: list[_Part]) -> list[Read]:
    """Newest first through REST (`always`): the range below each stream's covered edge in
    windows of window_days, newest first; Get Lead Activities reads forward from a start,
    so each window is a read of its own."""
    reads: list[Read] = []
    for (start, end), cohort in sorted(_spans(parts).items(), key=lambda i: -i[0][1].timestamp()):
        names = tuple(p.stream.name for p in cohort)
        upper = end
        while upper > start:
            lower = max(start, upper - s.width)
            reads.append(Read("rest", names, lower, upper, "", direction=BACKWARD))
            upper = lower
    return reads


# -- bulk ---------------------------------------------------------------------------------

def _bulk_reads(s: Situation, parts: list[_Part]) -> list[Read]:
    """Bulk reads in delivery order (newest_first: what is new, then backward; else the
    backward remainder, then forward). Streams at bookmarks within BULK_SHARE_SPAN of each
    other share a start: one first window, one job."""
    forward = [p for p in parts if p.direction == FORWARD]
    backward = [p for p in parts if p.direction == BACKWARD]
    ahead = _shared_bulk(forward)
    behind = [Read("bulk", tuple(p.stream.name for p in cohort), start, end,
                   "newest first" if s.newest_first else "the rest of a backfill",
                   direction=BACKWARD)
              for (start, end), cohort in sorted(_spans(backward).items(),
                                                 key=lambda i: -i[0][1].timestamp())]
    return ahead + behind if s.newest_first else behind + ahead


def _shared_bulk(parts: list[_Part]) -> list[Read]:
    reads: list[Read] = []
    for start, cohort in sorted(_cohorts(parts).items()):
        names = tuple(p.stream.name for p in cohort)
        end = cohort[0].end
        if reads and start - reads[-1].start <= BULK_SHARE_SPAN and reads[-1].end == end:
            last = reads[-1]
            reads[-1] = replace(last, streams=last.streams + names,
                                floors={**last.floors, **{n: start for n in names}})
        else:
            reads.append(Read("bulk", names, start, end, "bulk export",
                              floors={n: start for n in names}))
    return reads


# -- small helpers ------------------------------------------------------------------------

def _wait(s: Situation, parts: list[_Part]) -> Read:
    start = min(p.start for p in parts)
    return Read("wait", tuple(dict.fromkeys(p.stream.name for p in parts)), start, s.end,
                f"no call left of max_rest_calls_per_day today ({_mode(s)})")


def _cohorts(parts: Iterable[_Part]) -> dict[dt.datetime, list[_Part]]:
    cohorts: dict[dt.datetime, list[_Part]] = {}
    for part in parts:
        cohorts.setdefault(part.start, []).append(part)
    return cohorts


def _spans(parts: Iterable[_Part]) -> dict[tuple[dt.datetime, dt.datetime], list[_Part]]:
    spans: dict[tuple[dt.datetime, dt.datetime], list[_Part]] = {}
    for part in parts:
        spans.setdefault((part.start, part.end), []).append(part)
    return spans


def _type(s: Situation, name: str) -> int:
    return next(v.type_id for v in s.streams if v.name == name)


def _mode(s: Situation) -> str:
    return "the export quota is gone" if s.export_quota_gone else \
        f"rest_increments: {s.rest_increments}"


def _span(span: dt.timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.0f} days"
