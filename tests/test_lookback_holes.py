"""Holes an adversarial review of the lookback (issue 24) found, each shown by a chain of
runs through the sandbox, and each closed: a Get Lead Activities read stopped short in commit
order (its `settled` stays a lookback before its edge), a state that lost its memory but kept
`settled` (settled at its bookmarks), a read whose end is behind the clock in commit order
(its records kept until a day after the read, not until its end)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

from conftest import run_tap
from test_lookback import (
    DATA_END,
    DATA_START,
    clocks,
    committed,
    expected,
    make,
    settings,
)

from tap_marketo_activities.sandbox import Sandbox

STOPPED, HOURS = 4, 1


def _run(box, tmp: Path, number: int, clock: str, state, odd: bool = False, **overrides):
    box.set_clock(clock)
    run = run_tap(tmp / str(number), settings(box, clock, **overrides), state)
    assert run.returncode == 0 or (odd and "answered oddly" in run.stderr), \
        run.stderr[-3000:]
    return run


def test_rest_stopped_short_then_bulk_by_date_loses_late_activities(
        tmp_path: Path) -> None:
    """Get Lead Activities pages in commit order, the bulk filter selects by activityDate.
    One run's REST read is stopped by an odd answer part-way: each group's edge is the
    newest activityDate seen, and the bookmark moves there, `settled` to min(edge,
    T - lookback). A Send Email dated a little before the edge but committed after the
    point where the read stopped (5-20 min late, lookback 1 h) was never read. The next
    runs go through bulk by activityDate from `settled` (= the edge): it is dated before
    that, so it is never delivered. (The threads make the stopping point vary a little:
    three stopping points are tried, any loss fails.)"""
    lost: dict[int, list] = {}
    for after in (4, 6, 8):
        delivered: Counter[str] = Counter()
        with Sandbox(job_latency=0.05, data_start=DATA_START, data_end=DATA_END,
                     activities_per_day=14400, late=True, bulk_by="date",
                     rest_order="commit", rate_limit_calls=5000) as box:
            state = None
            moments = clocks()[:7]
            for number, clock in enumerate(moments):
                if number == STOPPED:  # after a 2-hour pause: a read of several pages
                    box.set_rest_odd("more_missing", after=after)
                run = _run(box, tmp_path / str(after), number, clock, state,
                           odd=number == STOPPED,
                           rest_increments="always" if number <= STOPPED else "off",
                           max_rest_calls_per_day=50_000, lookback_hours=HOURS)
                box.clear_faults()
                guids, state = committed(run.messages)
                delivered.update(guids)
            must = expected(box, moments[-1], HOURS)
            assert not [g for g, n in delivered.items() if n > 1], "nothing twice"
            for guid in must - set(delivered):
                activity = next(a for a in box.visible_at(moments[-1])
                                if a["marketoGUID"] == guid)
                lost.setdefault(after, []).append(
                    (guid, activity["activityTypeId"], activity["activityDate"],
                     box.committed_at(guid)))
    assert not lost, f"lost (guid, type, activityDate, committed): {lost}"


def test_state_without_memory_but_with_settled_sends_the_lookback_again(
        tmp_path: Path) -> None:
    """A state whose `marketo_delivered` is gone (truncated, or dropped by a tool that
    keeps only the bookmarks) while `settled` stays: the memory is read as empty rather
    than unreadable, the run re-reads [settled, bookmark) and sends it all again."""
    with make("date", "date") as box:
        moments = clocks()
        first = _run(box, tmp_path, 0, moments[0], None)
        state = first.last_state
        assert "marketo_delivered" in state
        state.pop("marketo_delivered")
        second = _run(box, tmp_path, 1, moments[1], state)
    twice = set(first.guids()) & set(second.guids())
    assert not twice, f"{len(twice)} activities sent twice"



def test_end_date_behind_the_clock_rest_commit_order_sends_late_rows_twice(
        tmp_path: Path) -> None:
    """Runs an hour apart whose end_date lies 30 min behind the real clock (a scheduler's
    logical interval end), lookback 1 h, Get Lead Activities in commit order. Run k's read
    pages on past end_date by commit time and delivers late Send Emails dated before
    end_k but committed after it; they are remembered under the read's end, end_k. Run
    k+1 settles at end_k and prunes the bucket (tag <= settled); run k+2 reads from end_k
    by commit time, is handed those rows again (committed after end_k) and the memory
    forgot them: sent twice. Fix: tag a REST read's records with the instant the read
    ended in wall time (or the newest commit it can have seen), not its end bound."""
    delivered: Counter[str] = Counter()
    first = dt.datetime(2024, 2, 2, 6, tzinfo=dt.timezone.utc)
    with Sandbox(job_latency=0.05, data_start=DATA_START, data_end=DATA_END,
                 activities_per_day=14400, late=True, bulk_by="date", rest_order="commit",
                 rate_limit_calls=5000) as box:
        state = None
        for number in range(6):
            clock = first + dt.timedelta(hours=number)
            end_date = clock - dt.timedelta(minutes=30)
            box.set_clock(clock.strftime("%Y-%m-%dT%H:%M:%SZ"))
            config = settings(box, end_date.strftime("%Y-%m-%dT%H:%M:%SZ"),
                              rest_increments="always", max_rest_calls_per_day=50_000,
                              lookback_hours=1)
            run = run_tap(tmp_path / str(number), config, state)
            assert run.returncode == 0, run.stderr[-3000:]
            guids, state = committed(run.messages)
            delivered.update(guids)
    twice = [g for g, n in delivered.items() if n > 1]
    assert not twice, f"{len(twice)} sent twice"
