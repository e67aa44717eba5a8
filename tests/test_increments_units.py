"""Pure parts of REST increments: which road a window takes, the day's call budget, the
edge a read may claim, and what a page is (normalised, ordered, sifted) before that."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tap_marketo_activities.increments import (
    AUTO_MAX_CALLS,
    RESERVE_BLOCK,
    UNKNOWN_COST_CALLS,
    BudgetSpent,
    CallBudget,
    GroupProgress,
    NotReserved,
    call_cap,
    central_day,
    complete,
    groups_of,
    sift,
)
from tap_marketo_activities.rest import Page, normalised, parse_page

NOW = dt.datetime(2024, 2, 10, 18, 0, tzinfo=dt.timezone.utc)  # noon in US Central
HOUR = dt.timedelta(hours=1)


def budget(used: int = 0, rate: float | None = None, limit: int = 10_000) -> CallBudget:
    saved = {"day": "2024-02-10", "calls": used}
    if rate is not None:
        saved["calls_per_hour"] = rate
    return CallBudget.from_state(limit, saved, NOW, clock=lambda: NOW)


def test_the_road_of_a_window() -> None:
    assert call_cap("off", budget(), HOUR, 1, fallback=False) is None
    assert call_cap("always", budget(used=9_000), 30 * 24 * HOUR, 1, fallback=False) == 1_000
    assert call_cap("auto", budget(used=10_000), HOUR, 1, fallback=True) is None  # spent
    # Unknown cost: only increments up to a day, and a short try.
    assert call_cap("auto", budget(), 24 * HOUR, 2, fallback=False) == UNKNOWN_COST_CALLS
    assert call_cap("auto", budget(), 25 * HOUR, 2, fallback=False) is None
    # Known cost: REST while the estimate fits; the export quota gone, whatever is left.
    assert call_cap("auto", budget(rate=10), 2 * HOUR, 2, fallback=False) == AUTO_MAX_CALLS
    assert call_cap("auto", budget(rate=10), 200 * HOUR, 2, fallback=False) is None
    assert call_cap("auto", budget(rate=10), 200 * HOUR, 2, fallback=True) == 10_000
    assert call_cap("auto", budget(used=9_990, rate=10), 2 * HOUR, 2,
                    fallback=False) is None  # 2 x (20 + 2) calls do not fit in 10


def test_the_budget_is_the_day_s_across_runs() -> None:
    assert budget(used=40).used == 40
    yesterday = CallBudget.from_state(100, {"day": "2024-02-09", "calls": 99}, NOW)
    assert yesterday.used == 0 and yesterday.day == "2024-02-10"
    assert CallBudget.from_state(100, None, NOW).saved() == {"day": "2024-02-10", "calls": 0}
    spent = budget(used=99, limit=100)
    spent.take(cap=10)
    with pytest.raises(BudgetSpent):
        spent.take(cap=10)
    capped = budget()
    capped.take(cap=1)
    with pytest.raises(BudgetSpent):  # this read's cap
        capped.take(cap=1)
    assert capped.used == 1 and capped.run_calls == 1


def test_the_cost_is_learnt_from_reads() -> None:
    short = budget()
    short.learn(2, 10 * dt.timedelta(minutes=1))  # too short to say anything
    assert short.calls_per_hour is None
    learning = budget()
    learning.learn(42, 2 * HOUR)
    assert learning.calls_per_hour == 20
    learning.learn(22, 2 * HOUR)
    assert learning.calls_per_hour == 15  # the average with what was known
    assert learning.estimate(4 * HOUR, 2) == 2 * (60 + 2)
    assert budget(rate=15).calls_per_hour == learning.saved()["calls_per_hour"]


def test_type_groups_hold_at_most_ten_types_each_once() -> None:
    assert groups_of([3, 1, 2]) == [(1, 2, 3)]
    assert [len(g) for g in groups_of(list(range(1, 24)))] == [10, 10, 3]


def at(second: int, guid: str, type_id: int = 1) -> dict[str, Any]:
    return {"marketoGUID": guid, "activityDate": f"2024-02-10T00:00:{second:02d}Z",
            "activityTypeId": type_id}


START, END = "2024-02-10T00:00:00Z", "2024-02-10T00:00:30Z"


def guids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["marketoGUID"] for r in rows]


def test_a_read_never_claims_the_newest_second_before_it_is_complete() -> None:
    group = GroupProgress((1,), "")
    first = complete(group, [at(1, "a"), at(2, "b"), at(2, "c")], False, START, END)
    assert guids(first) == ["a"]
    assert group.edge == "2024-02-10T00:00:02Z"  # everything before it is delivered
    # The next page goes on in the same second: held until a later second shows up.
    second = complete(group, [at(2, "d")], False, START, END)
    assert second == [] and guids(group.held) == ["b", "c", "d"]
    third = complete(group, [at(3, "e")], True, START, END)
    assert guids(third) == ["b", "c", "d", "e"]
    assert group.edge == END and group.done


def test_a_late_page_never_moves_the_edge_below_rows_already_sent() -> None:
    group = GroupProgress((1,), "")
    assert guids(complete(group, [at(5, "a"), at(9, "b")], False, START, END)) == ["a"]
    # Rows older than the edge (late ones) go out at once; the edge stays, "b" stays held.
    late = complete(group, [at(3, "c")], False, START, END)
    assert guids(late) == ["c"] and guids(group.held) == ["b"]
    assert group.edge == "2024-02-10T00:00:09Z"


SIFT_CASES = [
    # (page, seen before, asked types, fresh, repeated, unasked, ended)
    ([at(1, "a"), at(2, "b")], set(), (1,), ["a", "b"], [], [], False),
    ([at(1, "a"), at(2, "b")], {"a"}, (1,), ["b"], ["a"], [], False),
    ([at(1, "a"), at(2, "x", 6)], set(), (1,), ["a"], [], [6], False),
    # A future-dated activity at the page's end is no end, and not this read's.
    ([at(1, "a"), {**at(2, "f"), "activityDate": "2099-01-01T00:00:00Z"}], set(), (1,),
     ["a"], [], [], False),
    # A whole new page at or after the end: the log has passed the read's end.
    ([at(30, "y"), at(31, "z")], set(), (1,), [], [], [], True),
    # ... but not a page whose only activity past the end was seen before.
    ([at(31, "z")], {"z"}, (1,), [], ["z"], [], False),
    ([], set(), (1,), [], [], [], False),
]


@pytest.mark.parametrize(("page", "seen", "types", "fresh", "repeated", "unasked", "ended"),
                         SIFT_CASES)
def test_what_a_group_takes_of_a_page(page: list[dict[str, Any]], seen: set[str],
                                      types: tuple[int, ...], fresh: list[str],
                                      repeated: list[str], unasked: list[int],
                                      ended: bool) -> None:
    sifted = sift(Page(page, True, "next"), types, set(seen), END)
    assert (guids(sifted.fresh), sifted.repeated, sifted.unasked, sifted.ended) == (
        fresh, repeated, unasked, ended)
    assert sift(Page(page, False, None), types, set(seen), END).ended  # Marketo's end


NORMALISED = [
    # (activityDate, activityTypeId, marketoGUID) in -> (activityDate, type id, guid) out
    (("2024-02-10T10:00:00Z", 1, "7"), ("2024-02-10T10:00:00Z", 1, "7")),
    (("2024-02-10T11:00:00+0100", "1", "7"), ("2024-02-10T10:00:00Z", 1, "7")),
    (("2024-02-10T05:00:00-0500", 1.0, 7), ("2024-02-10T10:00:00Z", 1, "7")),
    (("2024-02-10T10:00:00+00:00", " 12", "7"), ("2024-02-10T10:00:00Z", 12, "7")),
    (("2024-02-10T10:00:00.400Z", 100001, "7"), ("2024-02-10T10:00:00Z", 100001, "7")),
]


@pytest.mark.parametrize(("given", "wanted"), NORMALISED)
def test_activities_are_normalised_before_anything_compares_them(
        given: tuple[Any, Any, Any], wanted: tuple[str, int, str]) -> None:
    date, type_id, guid = given
    activity = normalised({"marketoGUID": guid, "activityDate": date,
                           "activityTypeId": type_id, "leadId": 5})
    assert (activity["activityDate"], activity["activityTypeId"], activity["marketoGUID"]
            ) == wanted
    assert activity["leadId"] == 5


ODD_ITEMS = [
    ("an activity", "not an object"),
    ({"activityDate": "2024-02-10T10:00:00Z", "activityTypeId": 1}, "without marketoGUID"),
    ({"marketoGUID": "", "activityDate": "2024-02-10T10:00:00Z", "activityTypeId": 1},
     "without marketoGUID"),
    ({"marketoGUID": "7", "activityTypeId": 1}, "activityDate None is not a datetime"),
    ({"marketoGUID": "7", "activityDate": "yesterday", "activityTypeId": 1},
     "is not a datetime"),
    ({"marketoGUID": "7", "activityDate": "2024-02-10T10:00:00Z"}, "None is not an integer"),
    ({"marketoGUID": "7", "activityDate": "2024-02-10T10:00:00Z", "activityTypeId": "one"},
     "'one' is not an integer"),
    ({"marketoGUID": "7", "activityDate": "2024-02-10T10:00:00Z", "activityTypeId": 1.5},
     "is not an integer"),
    ({"marketoGUID": "7", "activityDate": "2024-02-10T10:00:00Z", "activityTypeId": True},
     "is not an integer"),
]


@pytest.mark.parametrize(("item", "words"), ODD_ITEMS)
def test_an_activity_that_cannot_be_placed_or_routed_is_odd(item: Any, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        normalised(item)


PAGE = {"activityDate": "2024-02-10T10:00:00Z", "activityTypeId": 1}
ODD_PAGES = [
    ({"nextPageToken": "B", "result": []}, "no moreResult"),
    ({"moreResult": "true", "nextPageToken": "B"}, "moreResult 'true', not a boolean"),
    ({"moreResult": 1, "nextPageToken": "B"}, "not a boolean"),
    ({"moreResult": True, "nextPageToken": "A"}, "the nextPageToken it was sent"),
    ({"moreResult": True, "nextPageToken": "A", "result": [{**PAGE, "marketoGUID": "1"}]},
     "the nextPageToken it was sent"),
    ({"moreResult": True}, "without a nextPageToken"),
    ({"moreResult": True, "nextPageToken": "B", "result": {"a": 1}}, "not a list"),
]


@pytest.mark.parametrize(("envelope", "words"), ODD_PAGES)
def test_a_page_of_the_wrong_shape_is_odd_never_the_end(envelope: dict[str, Any],
                                                        words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        parse_page(envelope, sent="A")


def test_a_page_is_put_in_date_and_guid_order() -> None:
    rows = [{**PAGE, "marketoGUID": "9", "activityDate": "2024-02-10T10:00:01Z"},
            {**PAGE, "marketoGUID": "8", "activityDate": "2024-02-10T11:00:01+0100"},
            {**PAGE, "marketoGUID": "3", "activityDate": "2024-02-10T10:00:02Z"},
            {**PAGE, "marketoGUID": "5"}]
    page = parse_page({"moreResult": False, "result": rows}, sent="A")
    assert guids(page.activities) == ["5", "8", "9", "3"]
    assert page.more is False and page.token is None
    # The last page's token is no promise: it may be the one sent.
    assert parse_page({"moreResult": False, "nextPageToken": "A"}, sent="A").activities == []


CHICAGO = ZoneInfo("America/Chicago")


def central(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=CHICAGO)


DAYS = [
    # (moment, the US Central day its calls count on)
    (central("2024-02-10T23:59:59"), "2024-02-10"),
    (central("2024-02-11T00:00:00"), "2024-02-11"),
    (dt.datetime(2024, 2, 11, 5, 59, tzinfo=dt.timezone.utc), "2024-02-10"),  # CST: UTC-6
    (dt.datetime(2024, 2, 11, 6, 0, tzinfo=dt.timezone.utc), "2024-02-11"),
    (dt.datetime(2024, 7, 11, 4, 59, tzinfo=dt.timezone.utc), "2024-07-10"),  # CDT: UTC-5
    (dt.datetime(2024, 7, 11, 5, 0, tzinfo=dt.timezone.utc), "2024-07-11"),
    (central("2024-03-10T03:30:00"), "2024-03-10"),  # the spring's short night
]


@pytest.mark.parametrize(("moment", "day"), DAYS)
def test_the_budget_s_day_is_us_central(moment: dt.datetime, day: str) -> None:
    assert central_day(moment) == day


def test_a_run_across_midnight_books_each_call_to_its_own_day() -> None:
    now = [central("2024-02-10T23:59:58")]
    budget = CallBudget.from_state(100, {"day": "2024-02-10", "calls": 40}, now[0],
                                   clock=lambda: now[0])
    budget.take(cap=50)
    budget.take(cap=50)
    assert budget.saved(final=True) == {"day": "2024-02-10", "calls": 42}
    now[0] = central("2024-02-11T00:00:01")
    budget.take(cap=50)
    assert budget.saved(final=True) == {"day": "2024-02-11", "calls": 1}
    assert budget.run_calls == 3


STATES = [
    # (what --state holds, the day's count, the learnt cost)
    ({"day": "2024-02-10", "calls": Decimal("34"), "calls_per_hour": Decimal("12.5")}, 34,
     12.5),
    ({"day": "2024-02-10", "calls": 34.0, "calls_per_hour": 12}, 34, 12.0),
    ({"day": "2024-02-10", "calls": Decimal("34.2")}, 35, None),  # never fewer
    ({"day": "2024-02-09", "calls": 34, "calls_per_hour": 3}, 0, 3.0),  # yesterday's
    ({"day": "2024-02-10", "calls": "34", "calls_per_hour": "x"}, 0, None),
    ({"day": "2024-02-10", "calls": True, "calls_per_hour": -1}, 0, None),
    ({"day": "2024-02-10", "calls": Decimal("NaN")}, 0, None),
    ("garbage", 0, None),
]


@pytest.mark.parametrize(("saved", "calls", "rate"), STATES)
def test_the_budget_reads_what_the_sdk_hands_over(saved: Any, calls: int,
                                                  rate: float | None) -> None:
    budget = CallBudget.from_state(100, saved, NOW, clock=lambda: NOW)
    assert (budget.used, budget.calls_per_hour) == (calls, rate)


def test_calls_are_written_to_the_state_before_they_are_made() -> None:
    written: list[int] = []
    budget = CallBudget.from_state(100, {"day": "2024-02-10", "calls": 5}, NOW,
                                   clock=lambda: NOW)
    budget.on_reserve = lambda: written.append(budget.saved()["calls"])
    for made in range(1, 26):
        try:
            budget.take(cap=1000)
        except NotReserved:
            budget.reserve()
            budget.take(cap=1000)
        assert written[-1] >= 5 + made  # a SIGKILL now leaves at least the calls made
    assert written == [5 + RESERVE_BLOCK, 5 + 2 * RESERVE_BLOCK, 5 + 3 * RESERVE_BLOCK]
    assert budget.saved()["calls"] == 5 + 3 * RESERVE_BLOCK  # a STATE mid-run
    assert budget.saved(final=True)["calls"] == 30  # the run's last STATE: exact


def test_the_reservation_stops_at_the_day_s_limit() -> None:
    budget = CallBudget.from_state(12, {"day": "2024-02-10", "calls": 5}, NOW,
                                   clock=lambda: NOW)
    budget.on_reserve = lambda: None
    budget.reserve()
    assert budget.saved()["calls"] == 12


def test_marketo_s_count_of_today_is_a_floor() -> None:
    budget = CallBudget.from_state(100, {"day": "2024-02-10", "calls": 5}, NOW,
                                   clock=lambda: NOW)
    budget.at_least("2024-02-09", 90)  # not today's count
    assert budget.used == 5
    budget.at_least("2024-02-10", 60)
    assert budget.used == 60 and budget.left() == 40
    budget.at_least("2024-02-10", 20)
    assert budget.used == 60
