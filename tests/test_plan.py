"""The plan as a table: which streams, which range, which road, and why, for every corner
the roads met (issue 23: a spent budget under `always`, a learnt cost, `always` with
newest_first, streams at different bookmarks) and every setting's case."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from tap_marketo_activities.plan import (
    Read,
    Situation,
    StreamView,
    estimate_calls,
    plan,
    purged,
    purged_parts,
)
from tap_marketo_activities.retention import Retention
from tap_marketo_activities.scheduler import BACKWARD, FORWARD

START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
END = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


def at(hours_before_end: float) -> dt.datetime:
    return END - dt.timedelta(hours=hours_before_end)


VISITS = StreamView("visits", 1, bookmark=at(2))
FORMS = StreamView("forms", 2, bookmark=at(2))
CLICKS = StreamView("clicks", 3, bookmark=at(3))
SENDS = StreamView("sends", 6, bookmark=at(24 * 20))
RESULTS = StreamView("results", 10, bookmark=at(2), bulk_only="selects actionResult")
FILTERED = StreamView("filtered", 13, bookmark=at(2),
                      bulk_only="has a primary_attribute_filters entry")
NEW = StreamView("new", 12)

BASE = Situation(streams=(VISITS, FORMS), start=START, end=END, width=31 * DAY,
                 calls_left=10_000, calls_per_hour=4.0)


def shape(reads: list[Read]) -> list[tuple]:
    """What a read is, without its words: road (`declined`: a REST read turned down, said
    in the log, its range carried by bulk), streams, range, direction."""
    return [("declined" if r.declined else "first" if r.first else r.road,
             tuple(sorted(r.streams)), r.start, r.end, r.direction) for r in reads]


CASES = {
    "auto: a 2-hour increment of two streams at one bookmark is one REST read": (
        BASE,
        [("rest", ("forms", "visits"), at(2), END, FORWARD)]),
    "off: bulk only": (
        replace(BASE, rest_increments="off"),
        [("bulk", ("forms", "visits"), at(2), END, FORWARD)]),
    "auto, cost learnt: a 30-hour increment (a paused schedule) takes REST": (
        replace(BASE, streams=(replace(VISITS, bookmark=at(30)),)),
        [("rest", ("visits",), at(30), END, FORWARD)]),
    "auto, cost not learnt: a 30-hour increment goes to bulk, said why": (
        replace(BASE, streams=(replace(VISITS, bookmark=at(30)),), calls_per_hour=None),
        [("declined", ("visits",), at(30), END, FORWARD),
         ("bulk", ("visits",), at(30), END, FORWARD)]),
    "auto: a stream REST cannot serve goes to bulk beside a REST read": (
        replace(BASE, streams=(VISITS, RESULTS, FILTERED)),
        [("rest", ("visits",), at(2), END, FORWARD),
         ("bulk", ("filtered", "results"), at(2), END, FORWARD)]),
    "always, budget spent: REST streams wait, the others still get bulk (corner 1)": (
        replace(BASE, rest_increments="always", calls_left=0,
                streams=(VISITS, RESULTS, FILTERED)),
        [("wait", ("visits",), at(2), END, FORWARD),
         ("bulk", ("filtered", "results"), at(2), END, FORWARD)]),
    "always, newest_first, no bookmark: REST windows newest first (corner 5)": (
        replace(BASE, rest_increments="always", newest_first=True, streams=(NEW,)),
        [("rest", ("new",), END - 31 * DAY, END, BACKWARD),
         ("rest", ("new",), START, END - 31 * DAY, BACKWARD)]),
    "always, oldest_first, no bookmark: one REST read from start_date": (
        replace(BASE, rest_increments="always", streams=(NEW,)),
        [("rest", ("new",), START, END, FORWARD)]),
    "auto, newest_first, no bookmark: bulk backward (a backfill is bulk's)": (
        replace(BASE, newest_first=True, streams=(NEW,)),
        [("bulk", ("new",), START, END, BACKWARD)]),
    "auto, newest_first with covered_from: increment by REST, the older part by bulk": (
        replace(BASE, newest_first=True,
                streams=(replace(VISITS, covered_from=START + 10 * DAY),)),
        [("rest", ("visits",), at(2), END, FORWARD),
         ("bulk", ("visits",), START, START + 10 * DAY, BACKWARD)]),
    "nearby bookmarks share one REST read from the oldest (corner 7)": (
        replace(BASE, streams=(VISITS, CLICKS)),
        [("rest", ("clicks", "visits"), at(3), END, FORWARD)]),
    "a far bookmark does not drag a cheap read to bulk": (
        replace(BASE, streams=(VISITS, SENDS), calls_per_hour=40.0),
        [("declined", ("sends",), at(24 * 20), END, FORWARD),
         ("rest", ("visits",), at(2), END, FORWARD),
         ("bulk", ("sends",), at(24 * 20), END, FORWARD)]),
    "more than ten types: sharing a read would cost a second group's walk": (
        replace(BASE, streams=tuple(StreamView(f"t{n:02}", n, bookmark=at(2 if n else 3))
                                    for n in range(11))),
        [("rest", ("t00",), at(3), END, FORWARD),
         ("rest", tuple(f"t{n:02}" for n in range(1, 11)), at(2), END, FORWARD)]),
    "bulk: bookmarks within a day share one first window": (
        replace(BASE, rest_increments="off", streams=(VISITS, CLICKS)),
        [("bulk", ("clicks", "visits"), at(3), END, FORWARD)]),
    "bulk: bookmarks weeks apart keep their own first windows": (
        replace(BASE, rest_increments="off", streams=(VISITS, SENDS)),
        [("bulk", ("sends",), at(24 * 20), END, FORWARD),
         ("bulk", ("visits",), at(2), END, FORWARD)]),
    "the export quota gone: REST takes the increment within the budget": (
        replace(BASE, export_quota_gone=True, calls_per_hour=None,
                streams=(replace(VISITS, bookmark=at(30)),)),
        [("rest", ("visits",), at(30), END, FORWARD)]),
    "after the REST reads, auto hands what they left to bulk": (
        replace(BASE, rest_tried=frozenset({"visits"})),
        [("rest", ("forms",), at(2), END, FORWARD),
         ("bulk", ("visits",), at(2), END, FORWARD)]),
    "after the REST reads, always waits for tomorrow": (
        replace(BASE, rest_increments="always", rest_tried=frozenset({"visits", "forms"})),
        [("wait", ("forms", "visits"), at(2), END, FORWARD)]),
    "an up-to-date stream has nothing to read": (
        replace(BASE, streams=(replace(VISITS, bookmark=END),)),
        []),
}


# Marketo's purge (issue 26): a 200-day backfill of a 90-day type beside a 25-month type.
LATER = START + 200 * DAY
EDGE = START + 109 * DAY  # LATER - 90 days - retention.MARGIN
GRID = START + 93 * DAY  # the window line (31 days from START) before EDGE
KEPT_90 = StreamView("visits", 1, retention=Retention(days=90))
KEPT_25M = StreamView("forms", 2, retention=Retention(months=25))
PURGE = Situation(streams=(KEPT_90, KEPT_25M), start=START, end=LATER, width=31 * DAY,
                  rest_increments="off", day_bytes={"visits": 1e6, "forms": 1e6},
                  cap_bytes=1e9)
TIGHT = replace(PURGE, cap_bytes=20e6)  # 20 days of one type a day
OLD = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)  # 36 months after START

CASES.update({
    "purge: no window of a 90-day type before its edge; the window across it shares": (
        PURGE,
        [("bulk", ("forms",), START, LATER, FORWARD),
         ("bulk", ("visits",), GRID, LATER, FORWARD)]),
    "purge: alone, a 90-day type starts on the window line before its edge": (
        replace(PURGE, streams=(KEPT_90,)),
        [("bulk", ("visits",), GRID, LATER, FORWARD)]),
    "purge: a REST read starts at the edge itself": (
        replace(PURGE, rest_increments="always", calls_left=10_000, streams=(KEPT_90,)),
        [("rest", ("visits",), EDGE, LATER, FORWARD)]),
    "purge: a quota-bound backfill reads the endangered range first (oldest_first)": (
        TIGHT,
        [("first", ("visits",), EDGE, START + 124 * DAY, FORWARD),
         ("bulk", ("forms",), START, LATER, FORWARD),
         ("bulk", ("visits",), START + 124 * DAY, LATER, FORWARD)]),
    "purge: sizes not learnt yet, what goes by before tomorrow's run comes first": (
        replace(PURGE, day_bytes={}),
        [("first", ("visits",), EDGE, START + 124 * DAY, FORWARD),
         ("bulk", ("forms",), START, LATER, FORWARD),
         ("bulk", ("visits",), START + 124 * DAY, LATER, FORWARD)]),
    "purge: newest_first from nothing: the endangered type first, oldest first": (
        replace(TIGHT, newest_first=True),
        [("first", ("visits",), EDGE, LATER, FORWARD),
         ("bulk", ("forms",), START, LATER, BACKWARD)]),
    "purge: newest_first, what is left below covered_from is all deleted: nothing": (
        replace(PURGE, newest_first=True,
                streams=(replace(KEPT_90, bookmark=LATER, covered_from=START + 50 * DAY),)),
        []),
    "purge: retention_months 25 drops the windows older than 25 months": (
        replace(PURGE, end=OLD, streams=(KEPT_25M,)),
        [("bulk", ("forms",), START + 310 * DAY, OLD, FORWARD)]),
    "purge: retention_months 37 keeps the 25-to-37-month-old windows": (
        replace(PURGE, end=OLD, streams=(replace(KEPT_25M, retention=Retention(months=37)),)),
        [("bulk", ("forms",), START, OLD, FORWARD)]),
    "purge: New Lead is kept forever": (
        replace(PURGE, end=OLD, streams=(NEW,)),
        [("bulk", ("new",), START, OLD, FORWARD)]),
})


@pytest.mark.parametrize("case", list(CASES))
def test_the_plan(case: str) -> None:
    situation, expected = CASES[case]
    assert shape(plan(situation)) == expected


def test_every_read_says_why() -> None:
    for situation, _ in CASES.values():
        assert all(read.why for read in plan(situation))


def test_a_declined_read_says_what_it_would_cost() -> None:
    expensive = replace(BASE, calls_per_hour=5000.0)
    declined = [r for r in plan(expensive) if r.declined]
    assert len(declined) == 1 and "more than the 2000 a read may take" in declined[0].why
    unknown = replace(BASE, calls_per_hour=None, streams=(replace(VISITS, bookmark=at(30)),))
    assert "cost not learnt yet, and 30 h is more than the 24 h" in \
        next(r for r in plan(unknown) if r.declined).why


def test_a_stream_in_a_shared_read_takes_what_lies_past_its_own_bookmark() -> None:
    read = plan(replace(BASE, streams=(VISITS, CLICKS)))[0]
    assert read.floor("clicks") == at(3) and read.floor("visits") == at(2)


def test_rest_reads_share_the_budget_in_order() -> None:
    tight = replace(BASE, calls_left=10, calls_per_hour=2.0,
                    streams=(VISITS, replace(SENDS, bookmark=at(24 * 25))))
    roads = {r.streams: r.road for r in plan(tight) if not r.declined}
    # 25 days at 2 calls an hour is past the budget: bulk; the 2-hour read fits.
    assert roads[("visits",)] == "rest"


@pytest.mark.parametrize(("rate", "hours", "groups", "calls"), [
    (None, 2, 1, None), (0.0, 2, 1, 2), (4.0, 2, 1, 10), (4.0, 2, 2, 20), (4.5, 1, 1, 7)])
def test_estimate_calls(rate: float | None, hours: float, groups: int, calls: int | None
                        ) -> None:
    assert estimate_calls(rate, dt.timedelta(hours=hours), groups) == calls


def test_the_plan_names_each_edge_and_what_is_gone() -> None:
    assert [(p.streams, p.edge, p.asked, p.gone) for p in purged(replace(
        PURGE, streams=(KEPT_90, KEPT_25M, replace(KEPT_90, name="sends", type_id=6))))] == [
        (("visits", "sends"), EDGE, 400 * DAY, 218 * DAY)]
    assert purged(replace(PURGE, streams=(KEPT_25M,))) == []


def test_a_read_first_says_why_with_its_mb_and_days() -> None:
    first = next(r for r in plan(TIGHT) if r.first)
    assert first.why == ("Marketo keeps 90 days: the backfill (oldest first) would reach part "
                         "of it only after Marketo deleted it, so it goes first; about 14.31 "
                         "MB, 1 daily run(s)")


def test_a_covered_range_reaches_down_over_what_is_deleted_whole() -> None:
    situation = replace(PURGE, newest_first=True, streams=(
        replace(KEPT_90, bookmark=LATER, covered_from=START + 50 * DAY),
        replace(KEPT_25M, bookmark=LATER, covered_from=START + 50 * DAY)))
    assert purged_parts(situation) == [("visits", START, START + 50 * DAY)]


def test_a_type_slower_than_a_day_a_day_is_read_first_whole() -> None:
    # 50 MB a day of data against a 20 MB cap: no order keeps up; oldest first, alone, is
    # the best there is (and large figures stay numbers: no timedelta overflow).
    heavy = replace(TIGHT, day_bytes={"visits": 50e6, "forms": 50e6})
    first = next(r for r in plan(heavy) if r.first)
    assert (first.start, first.end) == (EDGE, LATER)
    assert first.why.endswith("about 4339.22 MB, 228 daily run(s)")
