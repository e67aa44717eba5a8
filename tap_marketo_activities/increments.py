"""REST increments: which windows go through Get Lead Activities, the call budget, and the
read itself.

A bulk export job takes 20-70 minutes whatever its size; Get Lead Activities costs API calls
instead of export quota and brings a small increment in seconds. But a read walks the whole
activity log of the instance in the range (300 activities a call, every type counted) once
per group of up to 10 types, so its cost is set by the instance's volume, not the selected
types'. The tap learns that cost (calls per hour of range) from its reads and keeps it in
the state, with the calls it made today (US Central), so that `max_rest_calls_per_day` holds
across runs.

A read is exact at its edges: pages come in time order, so everything before the newest
second seen is complete; the rows of that second are held back until a later page (or the
read's end) shows it is complete, and the bookmark never claims more than was delivered.
"""

from __future__ import annotations

import datetime as dt
import math
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tap_marketo_activities.client import MarketoClient
from tap_marketo_activities.quota import central_midnight
from tap_marketo_activities.rest import TYPES_PER_READ, lead_activities
from tap_marketo_activities.schema import REPLICATION_KEY

REST_STATE_KEY = "marketo_rest"  # {"day", "calls", "calls_per_hour"}
# auto reads a window through REST when it costs at most this many calls: at the default
# api_limit_share that is under ten minutes of paging, against 20-70 minutes for one export
# job; past it, one export file costs a handful of calls for the same rows.
AUTO_MAX_CALLS = 2000
# With no learnt cost yet, auto tries REST on increments up to this long only, and with at
# most UNKNOWN_COST_CALLS calls (about two minutes): what the try does not reach goes to bulk,
# and what it reached teaches the cost.
UNKNOWN_COST_SPAN = dt.timedelta(days=1)
UNKNOWN_COST_CALLS = 500
CALLS_PER_READ = 2  # the paging token, and the last (short) page
LEARN_FROM_HOURS = 0.25  # a shorter read says too little about the instance's volume
PAGES_AHEAD = 4  # pages fetched ahead of the record path, per group


class BudgetSpent(Exception):
    """No call left: of max_rest_calls_per_day, or of this read's cap."""


@dataclass
class CallBudget:
    """This tap's Get Lead Activities calls of one US Central day, across runs."""

    limit: int
    day: str
    used: int = 0
    calls_per_hour: float | None = None  # per group of types, learnt from earlier reads
    run_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_state(cls, limit: int, saved: Any, now: dt.datetime) -> CallBudget:
        day = f"{central_midnight(now):%Y-%m-%d}"
        saved = saved if isinstance(saved, Mapping) else {}
        used = saved.get("calls") if saved.get("day") == day else 0
        rate = saved.get("calls_per_hour")
        return cls(limit, day, used if isinstance(used, int) else 0,
                   float(rate) if isinstance(rate, (int, float)) and rate >= 0 else None)

    def left(self) -> int:
        return max(0, self.limit - self.used)

    def take(self, cap: int) -> None:
        """One call, if this day's budget and the read's `cap` (calls of this run) allow."""
        with self.lock:
            if self.used >= self.limit or self.run_calls >= cap:
                raise BudgetSpent
            self.used += 1
            self.run_calls += 1

    def estimate(self, span: dt.timedelta, groups: int) -> int | None:
        """Calls a read of `span` for `groups` groups of types will take, or None."""
        if self.calls_per_hour is None:
            return None
        hours = span.total_seconds() / 3600
        return groups * (math.ceil(hours * self.calls_per_hour) + CALLS_PER_READ)

    def learn(self, calls: int, span: dt.timedelta) -> None:
        """A read of `span` (whole, or as far as it came) took `calls` calls: the instance's
        volume, in calls."""
        hours = span.total_seconds() / 3600
        if hours < LEARN_FROM_HOURS:
            return
        rate = max(0, calls - CALLS_PER_READ) / hours
        with self.lock:
            old = self.calls_per_hour
            self.calls_per_hour = rate if old is None else (old + rate) / 2

    def saved(self) -> dict[str, Any]:
        saved: dict[str, Any] = {"day": self.day, "calls": self.used}
        if self.calls_per_hour is not None:
            saved["calls_per_hour"] = round(self.calls_per_hour, 3)
        return saved


def groups_of(type_ids: Sequence[int]) -> list[tuple[int, ...]]:
    """Type ids in groups of at most TYPES_PER_READ, one paging sequence each."""
    ids = sorted(set(type_ids))  # merged_leads reads type 32 beside activities_merge_leads
    return [tuple(ids[i:i + TYPES_PER_READ]) for i in range(0, len(ids), TYPES_PER_READ)]


def call_cap(mode: str, budget: CallBudget, span: dt.timedelta, groups: int,
             fallback: bool) -> int | None:
    """The calls a REST read of this window may take, or None: bulk export instead.
    `fallback`: the export quota is gone, so REST is the only road today."""
    left = budget.left()
    if mode == "off" or left <= 0:
        return None
    if mode == "always" or fallback:
        return left
    cap = min(left, AUTO_MAX_CALLS)
    estimate = budget.estimate(span, groups)
    if estimate is None:
        return min(cap, UNKNOWN_COST_CALLS) if span <= UNKNOWN_COST_SPAN else None
    return cap if estimate <= cap else None


@dataclass
class GroupProgress:
    """How far one group's read has come: every activity before `edge` is delivered."""

    types: tuple[int, ...]
    edge: str
    held: list[dict[str, Any]] = field(default_factory=list)  # the newest second's rows
    calls: int = 0
    done: bool = False


class RestRead:
    """One window [start, end) of some types, every group paging side by side in threads
    (the client's pacer keeps them within api_limit_share), pages handed over in order."""

    def __init__(self, client: MarketoClient, budget: CallBudget, cap: int,
                 start: dt.datetime, end_text: str, type_ids: Sequence[int]) -> None:
        self.client = client
        self.budget = budget
        self.cap = budget.run_calls + cap
        self.start = start
        self.end = end_text
        self.groups = [GroupProgress(types, "") for types in groups_of(type_ids)]
        self.stop = threading.Event()
        self.pages: queue.Queue[tuple[int, Any]] = queue.Queue()
        self.spent = False  # the budget ended the read before its end
        self._room = [threading.Semaphore(PAGES_AHEAD) for _ in self.groups]

    def activities(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """(group, activities now known complete), in each group's time order; raises a
        page's error. Stops the threads when closed early."""
        threads = [threading.Thread(target=self._page, args=(n,), daemon=True,
                                    name=f"rest-{n}") for n in range(len(self.groups))]
        for thread in threads:
            thread.start()
        running = len(threads)
        try:
            while running:
                number, page = self.pages.get()
                self._room[number].release()
                if page is None or isinstance(page, BudgetSpent):
                    running -= 1
                    self.spent = self.spent or page is not None
                    continue
                if isinstance(page, Exception):
                    raise page
                yield number, self._complete(self.groups[number], *page)
        finally:
            self.stop.set()
            for room in self._room:
                room.release()

    def _page(self, number: int) -> None:
        group = self.groups[number]

        def spend() -> None:
            if self.stop.is_set():
                raise BudgetSpent
            self.budget.take(self.cap)
            group.calls += 1

        try:
            for page in lead_activities(self.client, self.start, group.types, spend):
                self._room[number].acquire()
                if self.stop.is_set():
                    return
                last = page.activities[-1][REPLICATION_KEY] if page.activities else ""
                ended = not page.more or str(last) >= self.end
                self.pages.put((number, (page.activities, ended)))
                if ended:
                    break
            self.pages.put((number, None))
        except BudgetSpent as spent:
            self.pages.put((number, spent))
        except Exception as exc:  # handed to the record path, which raises it
            self.pages.put((number, exc))

    def _complete(self, group: GroupProgress, activities: list[dict[str, Any]],
                  ended: bool) -> list[dict[str, Any]]:
        """The activities now known complete: all before the newest second seen (its rows
        may go on in the next page), or all before the read's end once it has ended."""
        rows = group.held + [a for a in activities if str(a[REPLICATION_KEY]) < self.end]
        if ended:
            group.held, group.edge, group.done = [], self.end, True
            return rows
        if not rows:
            return []
        newest = str(rows[-1][REPLICATION_KEY])
        split = len(rows)
        while split and str(rows[split - 1][REPLICATION_KEY]) == newest:
            split -= 1
        group.held, group.edge = rows[split:], max(group.edge, newest)
        return rows[:split]
