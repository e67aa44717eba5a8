"""REST increments: which windows go through Get Lead Activities, the call budget, and the
read itself.

A bulk export job takes 20-70 minutes whatever its size; Get Lead Activities costs API calls
instead of export quota and brings a small increment in seconds. But a read walks the whole
activity log of the instance in the range (300 activities a call, every type counted) once
per group of up to 10 types, so its cost is set by the instance's volume, not the selected
types'. The tap learns that cost (calls per hour of range) from its reads and keeps it in
the state, with the calls it made today (US Central), so that `max_rest_calls_per_day` holds
across runs. A call is counted before it is made, and written to the state (in small
blocks reserved ahead) before it is made: no stop, not even a SIGKILL, hides a call.

A read is exact at its edges: each page is put in time order, so everything before the
newest second seen is complete; the rows of that second are held back until a later page
(or the read's end) shows it is complete, and the edge never claims more than was
delivered. It trusts no answer: an odd one is retried, then the read stops at its edge
(OddRead), never taken for the end.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

from tap_marketo_activities.client import (
    CredentialsRefused,
    FatalError,
    MarketoClient,
    StillOdd,
)
from tap_marketo_activities.instants import isoformat
from tap_marketo_activities.quota import central_midnight
from tap_marketo_activities.records import UNASKED_TYPE, Problems
from tap_marketo_activities.rest import (
    ODD_TRIES,
    TYPES_PER_READ,
    Page,
    daily_usage,
    lead_activities,
)
from tap_marketo_activities.schema import REPLICATION_KEY

logger = logging.getLogger(__name__)

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
# Calls written to the state ahead of being made: a SIGKILL overcounts the day by at most
# this many, and a read writes one STATE per this many calls.
RESERVE_BLOCK = 10
REPEATED = "activity seen before in this read: skipped"
WAIT_SECONDS = 0.2  # how often a paging thread waiting for the state looks at `stop`


class BudgetSpent(Exception):
    """No call left: of max_rest_calls_per_day, or of this read's cap."""


class NotReserved(Exception):
    """The calls written to the state are all made: reserve() (in the thread that writes
    the state) before the next one."""


class OddRead(FatalError):
    """Marketo answered a read oddly, still after retries: the read stopped at `edge` (every
    activity of `types` before it is delivered), which is no end of the range."""

    def __init__(self, message: str, types: tuple[int, ...], edge: str) -> None:
        super().__init__(message)
        self.types = types
        self.edge = edge


def central_day(now: dt.datetime) -> str:
    """The US Central day Marketo counts calls on."""
    return f"{central_midnight(now):%Y-%m-%d}"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _count(value: Any) -> int | None:
    """A count as the SDK hands it over from --state (Decimal), or as written (int, float);
    a fraction is rounded up (a count may be too high, never too low)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return math.ceil(value)


def _rate(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    rate = float(value)
    return rate if math.isfinite(rate) and rate >= 0 else None


@dataclass
class CallBudget:
    """This tap's Get Lead Activities calls of one US Central day, across runs. Each call
    is counted on its own day (a run across midnight starts the new day at 0). With
    `on_reserve`, calls are written to the state before they are made: take() raises
    NotReserved when the calls last reserved are made, and reserve() (in the thread that
    writes the state) reserves RESERVE_BLOCK more and calls `on_reserve`, which must write
    a STATE holding saved() before it returns."""

    limit: int
    day: str
    used: int = 0
    calls_per_hour: float | None = None  # per group of types, learnt from earlier reads
    run_calls: int = 0
    reserved: int = 0  # the day's count the state holds: calls up to it may be made
    on_reserve: Callable[[], None] | None = None
    clock: Callable[[], dt.datetime] = utc_now
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_state(cls, limit: int, saved: Any, now: dt.datetime,
                   on_reserve: Callable[[], None] | None = None,
                   clock: Callable[[], dt.datetime] = utc_now) -> CallBudget:
        day = central_day(now)
        saved = saved if isinstance(saved, Mapping) else {}
        used = _count(saved.get("calls")) if saved.get("day") == day else 0
        return cls(limit, day, used or 0, _rate(saved.get("calls_per_hour")),
                   on_reserve=on_reserve, clock=clock)

    def left(self) -> int:
        return max(0, self.limit - self.used)

    def take(self, cap: int) -> None:
        """One call, if this day's budget and the read's `cap` (calls of this run) allow
        (BudgetSpent), and if it is written to the state (NotReserved)."""
        with self.lock:
            self._roll(self.clock())
            if self.used >= self.limit or self.run_calls >= cap:
                raise BudgetSpent
            if self.on_reserve is not None and self.used >= self.reserved:
                raise NotReserved
            self.used += 1
            self.run_calls += 1

    def reserve(self) -> None:
        """The next block of calls, written to the state (on_reserve) before any is made."""
        with self.lock:  # take() waits: no call of the block before the state holds it
            self._roll(self.clock())
            if self.used < self.reserved:
                return  # another thread's wait was answered already
            self.reserved = min(self.used + RESERVE_BLOCK, max(self.limit, self.used))
            if self.on_reserve is not None:
                self.on_reserve()

    def at_least(self, day: str, calls: int) -> None:
        """Marketo counts `calls` of this API user on `day`: the day's count is no lower."""
        with self.lock:
            self._roll(self.clock())
            if day == self.day:
                self.used = max(self.used, calls)

    def _roll(self, now: dt.datetime) -> None:
        day = central_day(now)
        if day != self.day:
            self.day, self.used, self.reserved = day, 0, 0

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

    def saved(self, final: bool = False) -> dict[str, Any]:
        """The budget for the state: the calls reserved (what a STATE written mid-run must
        hold, in case it is the last), or with `final` the calls made (the run's last
        STATE, written on every exit). Takes no lock: on_reserve calls it."""
        calls = self.used if final else max(self.used, self.reserved)
        saved: dict[str, Any] = {"day": self.day, "calls": calls}
        if self.calls_per_hour is not None:
            saved["calls_per_hour"] = round(self.calls_per_hour, 3)
        return saved


def count_daily_usage(client: MarketoClient, budget: CallBudget) -> None:
    """Get Daily Usage, once at the start of a run that may read through REST: the day's
    count is never below the calls Marketo says this API user made today (other pipelines
    with the same user, a state lost or older than the last run). A failed read leaves the
    count as the state has it, with a WARNING."""
    try:
        usage = daily_usage(client)
    except CredentialsRefused:
        raise
    except FatalError as exc:
        logger.warning("Get Daily Usage failed (%s): the day's REST calls are counted from "
                       "the state only (%d).", exc, budget.used)
        return
    user = client.api_user
    calls = usage.users.get(user, 0) if user else 0
    before = budget.used
    budget.at_least(usage.day, calls)
    if budget.used > before:
        logger.info("Marketo counts %d calls of API user %s today (%s), the state %d: the "
                    "day's REST calls are counted from %d.", calls, user, usage.day, before,
                    budget.used)


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


class Sifted(NamedTuple):
    """A page, sifted for one group: what is new to it, what it skipped, whether the page
    ends the read."""

    fresh: list[dict[str, Any]]  # of its types, not seen before in this read, before `end`
    repeated: list[str]  # marketoGUIDs seen before in this read
    unasked: list[int]  # type ids of activities of types the call did not ask for
    ended: bool


def sift(page: Page, types: tuple[int, ...], seen: set[str], end: str) -> Sifted:
    """What of a (normalised, ordered) page a group takes; `seen` grows. The read ends when
    Marketo says so, or when the page's new activities all lie at or after `end` (one
    dated in the future among others is no end: custom activities carry any date)."""
    fresh, repeated, unasked, new_dates = [], [], [], []
    for activity in page.activities:
        guid = activity["marketoGUID"]
        if guid in seen:
            repeated.append(guid)
            continue
        seen.add(guid)
        new_dates.append(activity[REPLICATION_KEY])
        if activity["activityTypeId"] not in types:
            unasked.append(activity["activityTypeId"])
        elif activity[REPLICATION_KEY] < end:
            fresh.append(activity)
    beyond = bool(new_dates) and min(new_dates) >= end
    return Sifted(fresh, repeated, unasked, not page.more or beyond)


def report_skipped(problems: Problems, sifted: Sifted, row: int) -> int:
    """Each activity a sift skipped (seen before, of a type not asked for), reported as a
    problem at the rows that follow `row`; the last row number."""
    for guid in sifted.repeated:
        row += 1
        problems.report(REPEATED, row, f"marketoGUID {guid}", limit=1)
    for type_id in sifted.unasked:
        row += 1
        problems.report(UNASKED_TYPE, row, f"type {type_id}", limit=1)
    return row


def complete(group: GroupProgress, fresh: list[dict[str, Any]], ended: bool, start: str,
             end: str) -> list[dict[str, Any]]:
    """The activities now known complete, in time order: all before the newest second seen
    (its rows may go on in the next page), or all once the read has ended (its edge is then
    `end`). The edge never goes back, so rows delivered stay before it."""
    rows = sorted(group.held + fresh, key=lambda a: (a[REPLICATION_KEY], a["marketoGUID"]))
    if ended:
        group.held, group.edge, group.done = [], end, True
        return rows
    newest = rows[-1][REPLICATION_KEY] if rows else ""
    if newest < max(group.edge, start):
        group.held = []
        return rows  # nothing at or past the edge: older rows (late ones) go out now
    split = len(rows)
    while split and rows[split - 1][REPLICATION_KEY] == newest:
        split -= 1
    group.held, group.edge = rows[split:], newest
    return rows[:split]


class RestRead:
    """One window [start, end) of some types, every group paging side by side in threads
    (the client's pacer keeps them within api_limit_share), pages handed over in order.
    Activities of types not asked for, or seen before in this read, are skipped and counted
    in `problems`."""

    def __init__(self, client: MarketoClient, budget: CallBudget, cap: int,
                 start: dt.datetime, end_text: str, type_ids: Sequence[int],
                 problems: Problems | None = None) -> None:
        self.client = client
        self.budget = budget
        self.cap = budget.run_calls + cap
        self.start = start
        self.end = end_text
        self.problems = problems or Problems(f"Get Lead Activities {isoformat(start)} .. "
                                             f"{end_text}")
        self.groups = [GroupProgress(types, "") for types in groups_of(type_ids)]
        self.stop = threading.Event()
        self.pages: queue.Queue[tuple[int, Any]] = queue.Queue()
        self.spent = False  # the budget ended the read before its end
        self._room = [threading.Semaphore(PAGES_AHEAD) for _ in self.groups]
        self._rows = 0

    def activities(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """(group, activities now known complete), in each group's time order; raises a
        page's error (OddRead: an odd answer, still after retries). Stops the threads when
        closed early. Calls are reserved in the state (budget.on_reserve) in this thread."""
        threads = [threading.Thread(target=self._page, args=(n,), daemon=True,
                                    name=f"rest-{n}") for n in range(len(self.groups))]
        for thread in threads:
            thread.start()
        running = len(threads)
        try:
            while running:
                number, message = self.pages.get()
                if isinstance(message, threading.Event):
                    self.budget.reserve()
                    message.set()
                    continue
                if message is None or isinstance(message, BudgetSpent):
                    running -= 1
                    self.spent = self.spent or message is not None
                    continue
                if isinstance(message, Exception):
                    raise self._stopped(self.groups[number], message)
                self._room[number].release()
                yield number, self._take(self.groups[number], message)
        finally:
            self.stop.set()
            for room in self._room:
                room.release()

    def _stopped(self, group: GroupProgress, error: Exception) -> Exception:
        if not isinstance(error, StillOdd):
            return error
        edge = group.edge or isoformat(self.start)
        return OddRead(f"Get Lead Activities answered oddly, still after {ODD_TRIES} tries: "
                       f"{error.what}. The read of types {','.join(map(str, group.types))} "
                       f"stopped at {edge}, the last point known complete, and goes on from "
                       "there in the next run; if it persists, report it to Marketo support "
                       "with this line.", group.types, edge)

    def _take(self, group: GroupProgress, sifted: Sifted) -> list[dict[str, Any]]:
        self._rows = report_skipped(self.problems, sifted, self._rows)
        return complete(group, sifted.fresh, sifted.ended, isoformat(self.start), self.end)

    def _spend(self, number: int) -> None:
        """Before each call of group `number`: counted, and written to the state first."""
        while True:
            if self.stop.is_set():
                raise BudgetSpent
            try:
                self.budget.take(self.cap)
            except NotReserved:
                answered = threading.Event()
                self.pages.put((number, answered))  # the consuming thread writes the state
                while not answered.wait(WAIT_SECONDS):
                    if self.stop.is_set():
                        raise BudgetSpent from None
                continue
            self.groups[number].calls += 1
            return

    def _page(self, number: int) -> None:
        group, seen = self.groups[number], set[str]()
        try:
            for page in lead_activities(self.client, self.start, group.types,
                                        lambda: self._spend(number)):
                sifted = sift(page, group.types, seen, self.end)
                self._room[number].acquire()
                if self.stop.is_set():
                    return
                self.pages.put((number, sifted))
                if sifted.ended:
                    break
            self.pages.put((number, None))
        except BudgetSpent as spent:
            self.pages.put((number, spent))
        except Exception as exc:  # handed to the record path, which raises it
            self.pages.put((number, exc))
