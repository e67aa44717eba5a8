"""Pure parts of REST increments: which road a window takes, the day's call budget, and the
edge a read may claim."""

from __future__ import annotations

import datetime as dt

import pytest

from tap_marketo_activities.increments import (
    AUTO_MAX_CALLS,
    UNKNOWN_COST_CALLS,
    BudgetSpent,
    CallBudget,
    GroupProgress,
    RestRead,
    call_cap,
    groups_of,
)

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


def at(second: int, guid: str) -> dict[str, str]:
    return {"marketoGUID": guid, "activityDate": f"2024-02-10T00:00:{second:02d}Z"}


def test_a_read_never_claims_the_newest_second_before_it_is_complete() -> None:
    read = RestRead.__new__(RestRead)  # only the edge arithmetic, no HTTP
    read.end = "2024-02-10T00:00:30Z"
    group = GroupProgress((1,), "")
    first = read._complete(group, [at(1, "a"), at(2, "b"), at(2, "c")], ended=False)
    assert [r["marketoGUID"] for r in first] == ["a"]
    assert group.edge == "2024-02-10T00:00:02Z"  # everything before it is delivered
    # The next page goes on in the same second: held until a later second shows up.
    second = read._complete(group, [at(2, "d")], ended=False)
    assert second == [] and [r["marketoGUID"] for r in group.held] == ["b", "c", "d"]
    third = read._complete(group, [at(3, "e"), at(31, "late")], ended=True)
    assert [r["marketoGUID"] for r in third] == ["b", "c", "d", "e"]  # not past the end
    assert group.edge == read.end and group.done
