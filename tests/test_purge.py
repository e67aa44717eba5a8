"""Marketo's purge (issue 26), against the sandbox with its purge on, over HTTP: a backfill
asks for no type where Marketo has deleted it, delivers everything still there, names the
edge once; a quota-bound backfill run once a day loses no 90-day row to the purge."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import config_for, run_tap

from tap_marketo_activities.quota import MB
from tap_marketo_activities.sandbox import Sandbox

VISITS, FORMS = 1, 2  # Visit Webpage: 90 days; Fill Out Form: 25 months
STREAMS = {VISITS: "activities_visit_webpage", FORMS: "activities_fill_out_form"}


def text(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def info_lines(stderr: str, words: str) -> list[str]:
    return [line for line in stderr.splitlines() if words in line]


def test_a_200_day_backfill_asks_for_no_deleted_range(tmp_path: Path) -> None:
    start, end = "2024-01-01T00:00:00Z", "2024-07-19T00:00:00Z"  # 200 days
    # Marketo keeps Visit Webpage 90 days: from 2024-04-20; the tap asks from a day earlier
    # (retention.MARGIN: Marketo's clock may lag the tap's).
    edge = "2024-04-19T00:00:00Z"
    with Sandbox(job_latency=0.1, data_start=start, data_end=end, purge=True) as box:
        config = config_for(box, start_date=start, end_date=end, rest_increments="off",
                            activity_type_ids=[VISITS, FORMS], window_days=31)
        run = run_tap(tmp_path, config)
        assert run.returncode == 0, run.stderr[-3000:]
        jobs = box.stats()["jobs"]
        # No job asks for Visit Webpage over a window that ends before its edge.
        assert [j for j in jobs if VISITS in j["activityTypeIds"] and j["endAt"] <= edge] == []
        # Everything still there, once.
        readable = Counter(a["marketoGUID"] for a in box.expected(start, end, [VISITS, FORMS])
                           if a["activityDate"] < end)
        assert run.guids() == readable
        assert min(r["activityDate"] for r in run.records[STREAMS[VISITS]]) >= edge
        assert min(r["activityDate"] for r in run.records[STREAMS[FORMS]]) < "2024-01-02"
    # One line names the edge; the summary says how much was gone.
    assert info_lines(run.stderr, "nothing before") == [
        line for line in run.stderr.splitlines()
        if "activities_visit_webpage: Marketo keeps 90 days; nothing before 2024-04-19 "
           "can come." in line]
    assert len(info_lines(run.stderr, "nothing before")) == 1
    assert "Marketo had already deleted 109 days of the 200 days asked of 1 stream" in \
        run.stderr


def test_a_bookmark_moves_over_a_range_marketo_deleted_whole(tmp_path: Path) -> None:
    start, end = "2024-01-01T00:00:00Z", "2024-07-19T00:00:00Z"
    low = "2024-03-01T00:00:00Z"  # a newest-first backfill got down to here; below: deleted
    state = {"bookmarks": {STREAMS[VISITS]: {"replication_key": "activityDate",
                                             "replication_key_value": end,
                                             "covered_from": low}}}
    with Sandbox(job_latency=0.1, data_start=start, data_end=end, purge=True) as box:
        config = config_for(box, start_date=start, end_date=end, rest_increments="off",
                            activity_type_ids=[VISITS], backfill_order="newest_first")
        run = run_tap(tmp_path, config, state=state)
        assert box.stats()["jobs"] == []  # nothing there to wait for
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.last_state["bookmarks"][STREAMS[VISITS]]["covered_from"] == start
    assert "Marketo had already deleted 60 days of the 60 days asked of 1 stream" in \
        run.stderr


# -- a quota-bound backfill, one run a day ------------------------------------------------

CLOCK = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)  # the first run's day
BACK = dt.timedelta(days=120)
PER_DAY = 300


def daily_backfill(box: Sandbox, tmp_path: Path, cap_mb: float, **overrides: Any
                   ) -> list[Any]:
    """One run a day, the sandbox's clock and end_date a day later each time, until both
    streams are at the clock."""
    state: dict[str, Any] | None = None
    runs = []
    for day in range(40):
        clock = CLOCK + dt.timedelta(days=day)
        box.set_clock(clock)
        config = config_for(box, start_date=text(CLOCK - BACK), end_date=text(clock),
                            activity_type_ids=[VISITS, FORMS], rest_increments="off",
                            max_export_mb_per_day=cap_mb, window_days=20, **overrides)
        run = run_tap(tmp_path / f"day{day}", config, state=state)
        assert run.states, run.stderr[-3000:]
        runs.append(run)
        state = run.last_state
        assert box.stats()["export_bytes_today"] <= cap_mb * MB  # the cap never passed
        box.new_day()
        marks = state["bookmarks"]
        if all(marks.get(s, {}).get("replication_key_value", "") >= text(clock)
               for s in STREAMS.values()):
            return runs
    raise AssertionError("not done after 40 runs")


def test_a_quota_bound_backfill_loses_no_90_day_row_to_the_purge(tmp_path: Path) -> None:
    start = CLOCK - BACK
    with Sandbox(job_latency=0.05, data_start=text(start - dt.timedelta(days=30)),
                 data_end=text(CLOCK + dt.timedelta(days=60)), activities_per_day=PER_DAY,
                 rate_limit_calls=1000, purge=True) as box:
        box.set_clock(CLOCK)
        readable_then = {a["marketoGUID"] for a in box.expected(text(start), text(CLOCK),
                                                                [VISITS])}
        total = sum(len(str(a)) for a in box.expected(text(start), text(CLOCK),
                                                      [VISITS, FORMS]))
        runs = daily_backfill(box, tmp_path, cap_mb=round(total / 16 / MB, 3))
        got = Counter(r["marketoGUID"] for run in runs
                      for r in run.records[STREAMS[VISITS]])
        last = CLOCK + dt.timedelta(days=len(runs) - 1)
        forms = Counter(r["marketoGUID"] for run in runs for r in run.records[STREAMS[FORMS]])
        forms_expected = {a["marketoGUID"] for a in box.expected(text(start), text(last),
                                                                 [FORMS])
                          if a["activityDate"] < text(last)}
    assert len(runs) >= 4  # quota-bound: several days
    assert readable_then <= set(got), len(readable_then - set(got))  # nothing lost
    assert [g for g, n in (got + forms).items() if n > 1] == []  # nothing twice
    assert set(forms) == forms_expected
    first = runs[0].stderr
    assert len(info_lines(first, "Read first: activities_visit_webpage")) == 1, first[-3000:]
