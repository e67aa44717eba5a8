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
- Marketo deletes activities older than their type's retention (retention.py): no read asks
  for a type before its edge, and a bulk backfill whose order would reach some rows of a
  short-lived type only after Marketo deleted them reads that range first.
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
from tap_marketo_activities.quota import MB
from tap_marketo_activities.retention import FOREVER, Retention
from tap_marketo_activities.scheduler import BACKWARD, FORWARD

Road = Literal["rest", "bulk", "wait"]
# Bulk: streams whose bookmarks lie this close share their first window (one job instead
# of one per bookmark); the later ones' rows of the gap are exported once more and skipped.
BULK_SHARE_SPAN = dt.timedelta(days=1)
DAY = dt.timedelta(days=1)
PACE_STEP = dt.timedelta(hours=1)  # how finely the pace of a backfill is followed


@dataclass(frozen=True)
class StreamView:
    """What the plan needs of a stream."""

    name: str
    type_id: int
    bookmark: dt.datetime | None = None  # everything before it is delivered
    covered_from: dt.datetime | None = None  # a newest-first backfill reached down to here
    bulk_only: str = ""  # why Get Lead Activities cannot serve it, or ""
    retention: Retention = FOREVER  # how long Marketo keeps its activities


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
    # Bulk: what a day of each stream's activities exports (learnt; absent: not known
    # yet), and the daily cap: how fast a backfill goes, against Marketo's purge.
    day_bytes: Mapping[str, float] = field(default_factory=dict)
    cap_bytes: float = 0.0


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
    # Bulk: read before every other bulk read, whatever backfill_order says: Marketo would
    # delete some of its rows before the backfill reached them.
    first: bool = False

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
    asked: dt.datetime | None = None  # where it began before Marketo's purge cut it


@dataclass(frozen=True)
class Purged:
    """Streams of one retention whose asked range reaches before Marketo's edge."""

    retention: Retention
    edge: dt.datetime  # nothing before it can come
    streams: tuple[str, ...]
    asked: dt.timedelta  # the ranges asked, summed over the streams
    gone: dt.timedelta  # of which Marketo has deleted


def plan(situation: Situation) -> list[Read]:
    """The reads of this run: REST reads first (they take seconds), then bulk, each road's
    reads in the order they are delivered."""
    rest_parts, bulk_parts, waiting = _roads(situation, _kept(situation, _parts(situation)))
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


# -- what Marketo deleted ---------------------------------------------------------------

def _kept(s: Situation, parts: list[_Part]) -> list[_Part]:
    """Each part without what Marketo has deleted: a part wholly before its type's edge
    goes, a part across it starts at the edge."""
    kept = []
    for part in parts:
        edge = part.stream.retention.edge(s.end)
        if edge is None or part.start >= edge:
            kept.append(part)
        elif part.end > edge:
            kept.append(replace(part, start=edge, asked=part.start))
    return kept


def purged(s: Situation) -> list[Purged]:
    """Per retention, the streams whose asked range reaches before Marketo's edge, shortest
    retention first: where nothing can come from, and how much of the asked range is gone."""
    groups: dict[Retention, list[_Part]] = {}
    for part in _parts(s):
        edge = part.stream.retention.edge(s.end)
        if edge is not None and part.start < edge:
            groups.setdefault(part.stream.retention, []).append(part)
    found = []
    for retention, parts in groups.items():
        edge = retention.edge(s.end)
        assert edge is not None
        found.append(Purged(
            retention, edge, tuple(dict.fromkeys(p.stream.name for p in parts)),
            asked=sum((p.end - p.start for p in parts), dt.timedelta()),
            gone=sum((min(p.end, edge) - p.start for p in parts), dt.timedelta())))
    return sorted(found, key=lambda p: -p.edge.timestamp())


def purged_parts(s: Situation) -> list[tuple[str, dt.datetime, dt.datetime]]:
    """Backward parts Marketo has deleted whole (stream, start, end): nothing there to
    wait for, so the stream's covered range may reach down over them."""
    kept = {(p.stream.name, p.direction, p.end) for p in _kept(s, _parts(s))}
    return [(p.stream.name, p.start, p.end) for p in _parts(s)
            if p.direction == BACKWARD and (p.stream.name, p.direction, p.end) not in kept]


def _on_grid(s: Situation, part: _Part) -> _Part:
    """A bulk part cut at its edge starts at the window line before it: the window across
    the edge is one job with the other types, and asks for this one too (its deleted rows
    cost nothing)."""
    if part.asked is None:
        return part
    line = s.start + (part.start - s.start) // s.width * s.width
    return replace(part, start=max(part.asked, line))


def _grid_after(s: Situation, moment: dt.datetime) -> dt.datetime:
    steps = -((s.start - moment) // s.width)  # ceiling
    return s.start + steps * s.width


def _first_reads(s: Situation, parts: list[_Part]) -> tuple[list[Read], list[_Part]]:
    """Bulk reads to go before every other (the ranges of short-lived types that the
    backfill's order would reach only after Marketo deleted some of their rows), and the
    parts left for the usual order."""
    cohorts: dict[tuple[Retention, dt.datetime, dt.datetime, str], list[_Part]] = {}
    for part in parts:
        if part.stream.retention.edge(s.end) is not None:
            key = (part.stream.retention, part.start, part.end, part.direction)
            cohorts.setdefault(key, []).append(part)
    reads: list[Read] = []
    left = list(parts)
    def shortest_first(item: tuple[tuple[Retention, dt.datetime, dt.datetime, str], list[_Part]]
                       ) -> tuple[float, float, str]:
        (retention, start, _, direction), _ = item
        edge = retention.edge(s.end)
        return (-edge.timestamp() if edge else 0.0, start.timestamp(), direction)

    for (_, start, _, direction), cohort in sorted(cohorts.items(), key=shortest_first):
        upto = _endangered(s, parts, cohort)
        if upto is None:
            continue
        names = tuple(p.stream.name for p in cohort)
        if direction == BACKWARD and all(p.stream.bookmark is None for p in cohort):
            # Nothing delivered yet: oldest first, so that what goes soonest comes first.
            direction = FORWARD
        # Read alone, it starts at the edge itself: no job asks for its deleted rows.
        start = max(start, _head_edge(s, cohort))
        reads.append(Read("bulk", names, start, upto, _first_why(s, cohort, start, upto),
                          direction=direction, floors={n: start for n in names}, first=True))
        left = [p for p in left if p not in cohort]
        left += [replace(p, start=upto, asked=None) for p in cohort if upto < p.end]
    return reads, left


def _head_edge(s: Situation, cohort: list[_Part]) -> dt.datetime:
    edge = cohort[0].stream.retention.edge(s.end)
    assert edge is not None
    return edge


def _endangered(s: Situation, parts: list[_Part], cohort: list[_Part]) -> dt.datetime | None:
    """Where the range of `cohort` that Marketo would delete before the backfill reached it
    ends (on the window grid; a backward part is read whole), or None: nothing is."""
    head = cohort[0]
    edge = head.stream.retention.edge(s.end)
    assert edge is not None
    low = max(head.start, edge)  # what lies before the edge is gone already
    others = [p for p in parts if p not in cohort]
    if not any(_cost_before(s, [p], low, head.direction, 1.0) for p in others):
        return None  # nothing comes before it: the usual order is already the fastest
    if not (all(p.stream.name in s.day_bytes for p in parts) and s.cap_bytes > 0):
        # No size learnt yet: what goes by before tomorrow's run comes first.
        reach = edge + 2 * DAY
    elif head.direction == FORWARD:
        reach = low
        while reach < head.end and reach < edge + _runs(s, parts, reach, FORWARD) * DAY:
            reach += PACE_STEP
    else:
        reach = edge + _runs(s, parts, low, BACKWARD) * DAY
    if reach <= low:
        return None
    return head.end if head.direction == BACKWARD else min(head.end, _grid_after(s, reach))


def _runs(s: Situation, parts: list[_Part], moment: dt.datetime, direction: str) -> int:
    """The daily runs before the one that reaches `moment` (0: this run), each exporting a
    day's cap."""
    cost = sum(_cost_before(s, [p], moment, direction, s.day_bytes[p.stream.name])
               for p in parts)
    return math.floor(cost / s.cap_bytes)


def _cost_before(s: Situation, parts: list[_Part], moment: dt.datetime, direction: str,
                 rate: float) -> float:
    """What these parts export (at `rate` a day) before the backfill reaches `moment`
    going `direction`: the other direction's reads come first or last (backfill_order)."""
    cost = 0.0
    for part in parts:
        if part.direction != direction:
            before = (part.direction == FORWARD) == s.newest_first
            span = part.end - part.start if before else dt.timedelta()
        elif direction == FORWARD:
            span = max(dt.timedelta(), min(part.end, moment) - part.start)
        else:
            span = max(dt.timedelta(), part.end - max(part.start, moment))
        cost += rate * (span / DAY)
    return cost


def _first_why(s: Situation, cohort: list[_Part], start: dt.datetime, upto: dt.datetime
               ) -> str:
    head = cohort[0]
    edge = head.stream.retention.edge(s.end) or start
    order = "newest first" if s.newest_first else "oldest first"
    why = (f"{head.stream.retention.words()}: the backfill ({order}) would reach part of "
           "it only after Marketo deleted it, so it goes first")
    if all(p.stream.name in s.day_bytes for p in cohort) and s.cap_bytes > 0:
        days = (upto - max(start, edge)) / DAY
        size = sum(s.day_bytes[p.stream.name] for p in cohort) * days
        why += (f"; about {size / MB:.2f} MB, "
                f"{math.ceil(size / s.cap_bytes) or 1} daily run(s)")
    return why


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
    first, parts = _first_reads(s, [_on_grid(s, p) for p in parts])
    forward = [p for p in parts if p.direction == FORWARD]
    backward = [p for p in parts if p.direction == BACKWARD]
    ahead = _shared_bulk(forward)
    behind = [Read("bulk", tuple(p.stream.name for p in cohort), start, end,
                   "newest first" if s.newest_first else "the rest of a backfill",
                   direction=BACKWARD)
              for (start, end), cohort in sorted(_spans(backward).items(),
                                                 key=lambda i: -i[0][1].timestamp())]
    return first + (ahead + behind if s.newest_first else behind + ahead)


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
