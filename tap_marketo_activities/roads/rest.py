"""The REST road: the plan's Get Lead Activities reads, through the one record path, each
read's progress in the state every few seconds, the calls within the day's budget.

A forward read moves each stream's bookmark as far as its group of types is complete; a
backward one (newest first) covers its range only once it is whole. What a read learns of
the instance's volume (calls per hour of range) goes into the budget, and so into the state.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from typing import Any

from tap_marketo_activities.client import MarketoError
from tap_marketo_activities.delivered import REST_READ_MARGIN
from tap_marketo_activities.delivery import Delivered, Window
from tap_marketo_activities.increments import CallBudget, RestRead
from tap_marketo_activities.instants import isoformat
from tap_marketo_activities.merges import Routes
from tap_marketo_activities.plan import Read
from tap_marketo_activities.records import FileRejected, Problems, RecordBuilder
from tap_marketo_activities.roads import Context
from tap_marketo_activities.scheduler import BACKWARD
from tap_marketo_activities.settings import parse_instant
from tap_marketo_activities.streams import ActivityStream
from tap_marketo_activities.text import plural

logger = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 5.0  # a read's progress goes into the state this often


class RestRoad:
    """Carries REST reads out, one after the other; stops at the first that fails."""

    def __init__(self, ctx: Context, budget: CallBudget) -> None:
        self.ctx = ctx
        self.budget = budget
        self.reads_made = 0
        self.reads_done = 0  # reads delivered whole
        self.spent = False  # a read stopped at its cap or the day's budget
        self.failure: MarketoError | FileRejected | None = None
        self.last_reached = ""  # how far the last read came, where it stopped short

    def run(self, read: Read, streams: list[ActivityStream]) -> None:
        """One read of [start, end) for these streams."""
        window = Window(read.start, read.end)
        problems = Problems(f"Get Lead Activities {window.lower} .. {window.upper}")
        routes = Routes(streams, problems)
        bound = {t: b.bind_rest(problems) for t, b in routes.builders.items()}
        rest = RestRead(self.ctx.client, self.budget, read.cap, read.start, window.upper,
                        list(routes.builders), problems)
        members = [[s for s in streams if s.type_id in group.types] for group in rest.groups]
        calls_before = self.budget.run_calls
        progress = _Progress(self, rest, members, read)

        def rows() -> Iterator[tuple[RecordBuilder, dict[str, Any]]]:
            number = 0
            for _, activities in rest.activities():
                for activity in activities:
                    number += 1
                    problems.rows = number
                    type_id = activity["activityTypeId"]  # of the read's types: it sifts
                    yield routes.builders[type_id], bound[type_id](activity, number)
                progress.now_and_then()

        delivered: Delivered | None = None
        floors = {s.name: isoformat(read.floor(s.name)) for s in streams
                  if read.floor(s.name) > read.start}
        try:
            delivered = self.ctx.path.deliver(routes.rows(rows()), routes.streams, window,
                                              floors, remember_until=_remember_until(read))
        except (MarketoError, FileRejected) as exc:
            self.failure = exc
            logger.debug("Stopping in %s .. %s", window.lower, window.upper, exc_info=True)
        finally:
            rest.stop.set()  # --test may end the read early: its threads stop paging
        self._end(rest, members, read, delivered, calls_before)
        if problems.counts:
            logger.warning("%s had problems: %s", problems.label, problems.summary())

    def _end(self, rest: RestRead, members: list[list[ActivityStream]], read: Read,
             delivered: Delivered | None, calls_before: int) -> None:
        """The lesson first (not from a read an odd answer stopped), then the state that
        keeps it; then the read's line."""
        for group in rest.groups if self.failure is None else ():
            reached_at = read.end if group.done else parse_instant("edge", group.edge) \
                if group.edge else read.start
            self.budget.learn(group.calls, reached_at - read.start)
        done = [s for group, streams in zip(rest.groups, members, strict=True) if group.done
                for s in streams]
        if read.direction == BACKWARD and len(done) == sum(map(len, members)) and \
                not self.ctx.dry_run:
            for stream in done:
                stream.covered(read.start, read.end, backward=True)
        if not self.ctx.dry_run:
            for stream in done:
                stream.rest_reads += 1
        _checkpoint(self.ctx, rest, members, read)
        served = sum(map(len, members))
        self.reads_made += 1
        self.reads_done += bool(done) and len(done) == served
        self.spent = self.spent or rest.spent
        reached = min((g.edge for g in rest.groups if g.edge), default=isoformat(read.start))
        logger.info("%s %s .. %s: %s for %s through Get Lead Activities in %s (%d of "
                    "max_rest_calls_per_day=%d used today)%s.", _what(read),
                    isoformat(read.start), isoformat(read.end),
                    plural(sum(delivered.records.values()) if delivered else 0, "record"),
                    plural(served, "stream"), plural(self.budget.run_calls - calls_before,
                                                     "call"),
                    self.budget.used, self.budget.limit,
                    "; delivered" if len(done) == served else f"; delivered up to {reached}")
        self.last_reached = reached


class _Progress:
    """A read's progress into the state every CHECKPOINT_SECONDS."""

    def __init__(self, road: RestRoad, rest: RestRead, members: list[list[ActivityStream]],
                 read: Read) -> None:
        self.road, self.rest, self.members, self.read = road, rest, members, read
        self.last = time.monotonic()

    def now_and_then(self) -> None:
        if time.monotonic() - self.last >= CHECKPOINT_SECONDS:
            _checkpoint(self.road.ctx, self.rest, self.members, self.read)
            self.last = time.monotonic()


def _checkpoint(ctx: Context, rest: RestRead, members: list[list[ActivityStream]],
                read: Read) -> None:
    """BATCH files first, then one STATE: a forward read's streams reached their group's
    edge (a backward read covers its range only when whole)."""
    for group, streams in zip(rest.groups, members, strict=True):
        for stream in streams:
            ctx.path.feed(stream).end_window()
            if group.edge and read.direction != BACKWARD and not ctx.dry_run:
                stream.reached(group.edge)
    ctx.checkpoint()


def _remember_until(read: Read) -> str:
    """Get Lead Activities pages on past the read's end (to the present) until a page lies
    wholly after it: in commit order it hands over activities committed up to the time it
    is read, dated before the end. A read from any later `settled` could return them, so
    they are kept until REST_READ_MARGIN after now, not until the read's end."""
    now = dt.datetime.now(dt.timezone.utc)
    return isoformat(max(read.end, now + REST_READ_MARGIN))


def _what(read: Read) -> str:
    return "Backfill window" if read.direction == BACKWARD else "Increment"

