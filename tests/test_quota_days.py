"""Backfills several times the daily export cap, run once per simulated day against the
sandbox over HTTP, with the state carried from one run to the next: the cap is never
passed, no window is exported twice, nothing is lost, the plan line and the exit codes."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from conftest import TapRun, config_for, delivered_rows, parse_output, run_tap, tap_command

from tap_marketo_activities.quota import MB, ExportQuota
from tap_marketo_activities.sandbox import Sandbox
from tap_marketo_activities.streams import ActivityStream
from tap_marketo_activities.tap import TapMarketoActivities

START = "2024-01-01T00:00:00Z"
END = "2024-03-01T00:00:00Z"
DATA_END = "2024-03-10T00:00:00Z"  # room for end_date to move on as days pass
TYPES = [1, 2, 6, 12]  # visit webpage, fill out form, send email, new lead
STREAMS = {1: "activities_visit_webpage", 2: "activities_fill_out_form",
           6: "activities_send_email", 12: "activities_new_lead"}
PER_DAY = 200  # activities a day: about 0.65 MB of exports for TYPES over START .. END
CAP_MB = 0.16  # about a quarter of it
CAP = CAP_MB * MB
MAX_RUNS = 12


@dataclass
class Day:
    run: TapRun
    exported: int  # the sandbox's count of this day's export bytes
    jobs: list[dict[str, Any]]  # the jobs this run created, in the order it created them


def sandbox() -> Sandbox:
    # Runs follow each other in seconds, not days: the 20 s call window is not the point.
    return Sandbox(job_latency=0.1, data_start=START, data_end=DATA_END,
                   activities_per_day=PER_DAY, rate_limit_calls=1000)


def day_config(box: Sandbox, **overrides: Any) -> dict[str, Any]:
    # Bulk only: with the quota gone, REST increments would carry on (test_increments.py).
    return config_for(box, **{"activity_type_ids": TYPES, "max_export_mb_per_day": CAP_MB,
                              "rest_increments": "off", **overrides})


def done(state: dict[str, Any], streams: list[str], start: str, end: str) -> bool:
    """Every stream covers [start, end): nothing left of the backfill."""
    marks = state.get("bookmarks", {})
    return all(marks.get(s, {}).get("replication_key_value", "") >= end
               and marks[s].get("covered_from", start) <= start for s in streams)


def one_run(box: Sandbox, path: Path, config: dict[str, Any], state: dict | None) -> Day:
    before = {j["exportId"] for j in box.stats()["jobs"]}
    run = run_tap(path, config, state=state)
    stats = box.stats()
    jobs = [j for j in stats["jobs"] if j["exportId"] not in before]
    return Day(run, stats["export_bytes_today"], jobs)


def backfill(box: Sandbox, tmp_path: Path, ends: list[str] | None = None,
             state: dict | None = None, **overrides: Any) -> list[Day]:
    """One run a day until the backfill is done; `ends` moves end_date on day by day."""
    days: list[Day] = []
    for number in range(MAX_RUNS):
        end = ends[min(number, len(ends) - 1)] if ends else END
        config = day_config(box, end_date=end, **overrides)
        day = one_run(box, tmp_path / f"day{number + 1}", config, state)
        days.append(day)
        assert day.run.states, day.run.stderr[-3000:]
        state = day.run.last_state
        box.new_day()
        if done(state, [STREAMS[t] for t in TYPES], START, end):
            return days
    raise AssertionError(f"not done after {MAX_RUNS} runs")


def delivered(run: TapRun) -> list[tuple[str, str]]:
    """The windows a run delivered, in the order it delivered them (its log)."""
    found = []
    for line in run.stderr.splitlines():
        if "| Window " in line and line.endswith("delivered."):
            lower, _, upper = line.split("| Window ")[1].split(" ")[:3]
            found.append((lower, upper.rstrip(":")))
    return found


def lines(run: TapRun, level: str) -> list[str]:
    return [line for line in run.stderr.splitlines() if f"| {level}" in line]


def completed(box: Sandbox) -> list[dict[str, Any]]:
    return [j for j in box.stats()["jobs"] if j["status"] == "Completed"]


def assert_no_window_twice(jobs: list[dict[str, Any]], start: str, end: str) -> None:
    """The completed jobs tile [start, end): none twice, none overlapping, no gap."""
    windows = sorted((j["startAt"], j["endAt"]) for j in jobs)
    assert len(set(windows)) == len(windows)
    assert windows[0][0] == start and windows[-1][1] == end
    for (_, upper), (lower, _) in itertools.pairwise(windows):
        assert lower == upper, (upper, lower)  # == : no overlap and no gap


def assert_nothing_lost(box: Sandbox, days: list[Day], jobs: list[dict[str, Any]],
                        start: str, end: str) -> None:
    got: Counter[str] = Counter()
    for day in days:
        got += day.run.guids()
    expected = {a["marketoGUID"]: a for a in delivered_rows(box, start, end, TYPES)}
    assert set(got) == set(expected)
    # A window's inclusive endAt hands its edge second to the next window too: the rows of
    # that second are the next window's, of this run or the next, and come once.
    assert [g for g, n in got.items() if n > 1] == []


def assert_quota_days(box: Sandbox, days: list[Day]) -> None:
    """The cap is never passed on any day; the backfill takes at most one run more than
    its bytes need at the cap; each day but the last stops at the cap with exit 0 and
    one WARNING that says when the quota resets; the last one ends clean."""
    by_day = box.stats()["export_bytes_by_day"]
    assert len(by_day) == len(days)
    assert max(by_day.values()) <= CAP
    assert [d.exported for d in days] == [by_day[k] for k in sorted(by_day)]
    total = sum(by_day.values())
    assert total > 3 * CAP  # a backfill of several days
    assert len(days) <= math.ceil(total / CAP) + 1
    for day in days[:-1]:
        assert day.run.returncode == 0, day.run.stderr[-3000:]
        warnings = lines(day.run, "WARNING")
        assert len(warnings) == 1, warnings
        assert "max_export_mb_per_day" in warnings[0] and "resets at" in warnings[0]
        assert "UTC" in warnings[0] and "US Central" in warnings[0]
        assert "left to export" in warnings[0]
        assert lines(day.run, "ERROR") == []
    last = days[-1].run
    assert last.returncode == 0, last.stderr[-3000:]
    assert lines(last, "WARNING") == [] and lines(last, "ERROR") == []


def plan_of(run: TapRun) -> tuple[int, dt.date]:
    """The `Backfill plan:` line of a run: once in the log, once in the summary."""
    logged = [line for line in run.stderr.splitlines() if "| Backfill plan:" in line]
    summary = [line for line in run.stderr.splitlines() if line.startswith("Backfill plan:")]
    assert len(logged) == 1 and len(summary) == 1, run.stderr[-3000:]
    line = logged[0]
    assert " MB left to export for " in line and "daily run" in line
    runs = int(line.split(" that is ")[1].split()[0])
    finish = dt.date.fromisoformat(line.split("finishing around ")[1].split()[0])
    return runs, finish


# ---- the sandbox's new day -------------------------------------------------------------

def test_a_new_day_resets_the_quota_and_keeps_data_jobs_and_files(tmp_path: Path) -> None:
    with sandbox() as box:
        box.set_faults(export_quota_bytes=1000)
        first = run_tap(tmp_path / "1", day_config(box, max_export_mb_per_day=400,
                                                    end_date="2024-01-02T00:00:00Z"))
        assert first.returncode == 0, first.stderr[-3000:]
        used = box.stats()["export_bytes_today"]
        assert used > 1000
        token = requests.get(f"{box.base_url}/identity/oauth/token", params={
            "grant_type": "client_credentials", "client_id": box.config["client_id"],
            "client_secret": box.config["client_secret"]}, timeout=10).json()["access_token"]
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {token}"
        body = {"format": "CSV", "filter": {"createdAt": {
            "startAt": "2024-01-02T00:00:00Z", "endAt": "2024-01-03T00:00:00Z"}}}
        refused = api.post(f"{box.base_url}/bulk/v1/activities/export/create.json",
                           json=body, timeout=10).json()
        assert refused["errors"][0]["code"] == "1029"

        box.new_day()
        assert box.stats()["export_bytes_today"] == 0
        assert list(box.stats()["export_bytes_by_day"].values()) == [used]
        listed = api.get(f"{box.base_url}/bulk/v1/activities/export.json", timeout=10).json()
        finished = [dt.datetime.fromisoformat(j["finishedAt"].replace("Z", "+00:00"))
                    for j in listed["result"] if j["status"] == "Completed"]
        assert finished and max(finished) < dt.datetime.now(dt.timezone.utc) - dt.timedelta(
            hours=23)
        created = api.post(f"{box.base_url}/bulk/v1/activities/export/create.json",
                           json=body, timeout=10).json()
        assert created["success"], created
        job = next(j for j in box.stats()["jobs"] if j["status"] == "Completed")
        file = api.get(f"{box.base_url}/bulk/v1/activities/export/{job['exportId']}/file.json",
                       timeout=10)
        assert file.status_code == 200 and len(file.content) == job["fileSize"]


# ---- backfills over days -----------------------------------------------------------------

def test_an_oldest_first_backfill_keeps_the_cap_every_day_and_loses_nothing(
        tmp_path: Path) -> None:
    with sandbox() as box:
        days = backfill(box, tmp_path)
        assert_quota_days(box, days)
        jobs = completed(box)
        assert_no_window_twice(jobs, START, END)
        assert_nothing_lost(box, days, jobs, START, END)
        # Each run goes on where the one before stopped, oldest first.
        edge = START
        for day in days:
            windows = delivered(day.run)
            assert windows[0][0] == edge and windows == sorted(windows)
            edge = windows[-1][1]
        # The plan on day 1 (learnt from the probe) is one run off at most, and its finish
        # date is that many days on; every run logs its plan once.
        runs, finish = plan_of(days[0].run)
        assert abs(runs - len(days)) <= 1
        assert finish - dt.date.today() <= dt.timedelta(days=runs)
        for day in days[1:-1]:
            plan_of(day.run)
        assert "Backfill plan:" not in days[-1].run.stderr  # the last run needs no plan
        sizes = days[-1].run.last_state["marketo_export_sizes"]
        assert set(sizes) == {str(t) for t in TYPES}


def test_a_newest_first_backfill_brings_new_data_first_then_goes_back(
        tmp_path: Path) -> None:
    # A day passes between runs: end_date moves on a day each run.
    ends = [f"2024-03-{day:02d}T00:00:00Z" for day in range(1, 10)]
    with sandbox() as box:
        days = backfill(box, tmp_path, ends=ends, backfill_order="newest_first")
        assert_quota_days(box, days)
        last_end = ends[len(days) - 1]
        jobs = completed(box)
        assert_no_window_twice(jobs, START, last_end)
        assert_nothing_lost(box, days, jobs, START, last_end)
        first = delivered(days[0].run)
        assert first[0][1] == ends[0] and first == sorted(first, reverse=True)
        for number, day in enumerate(days[1:], 1):
            # What is new since the run before comes first, then on backward from where
            # that run stopped.
            windows = delivered(day.run)
            new = [w for w in windows if w[0] >= ends[number - 1]]
            old = windows[len(new):]
            assert new and windows[:len(new)] == new == sorted(new)
            assert new[0][0] == ends[number - 1] and new[-1][1] == ends[number]
            before = days[number - 1].run.last_state["bookmarks"]
            if old:
                assert old[0][1] == before[STREAMS[1]]["covered_from"]
                assert old == sorted(old, reverse=True)
            if day is not days[-1]:
                plan_of(day.run)
        assert "Backfill plan:" not in days[-1].run.stderr  # done: no plan for more runs
        marks = days[-1].run.last_state["bookmarks"]
        assert {marks[STREAMS[t]]["covered_from"] for t in TYPES} == {START}
        assert {marks[STREAMS[t]]["replication_key_value"] for t in TYPES} == {last_end}


def test_a_run_killed_mid_way_newest_first_loses_and_repeats_nothing(tmp_path: Path) -> None:
    with sandbox() as box:
        config = day_config(box, backfill_order="newest_first", max_jobs_in_queue=2,
                            window_days=7, max_export_mb_per_day=400)
        process = subprocess.Popen(tap_command(tmp_path / "killed", config),
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert process.stdout is not None
        out, marks = [], set()
        for line in process.stdout:
            out.append(line)
            message = json.loads(line)
            if message.get("type") == "STATE" and message["value"].get("bookmarks"):
                marks.add(json.dumps(message["value"]["bookmarks"], sort_keys=True))
                if len(marks) == 3:  # three windows delivered
                    process.send_signal(signal.SIGKILL)
                    break
        process.wait(timeout=30)
        killed = TapRun(process.returncode, parse_output("".join(out)), "")
        assert killed.returncode == -signal.SIGKILL
        state = killed.last_state
        assert state["bookmarks"][STREAMS[1]]["covered_from"] > START
        resumed = one_run(box, tmp_path / "resumed", config, state)
        assert resumed.run.returncode == 0, resumed.run.stderr[-3000:]
        jobs = completed(box)
        assert_no_window_twice(jobs, START, END)
        assert_nothing_lost(box, [Day(killed, 0, []), resumed], jobs, START, END)
        # A job the kill caught between its creation and the STATE naming it was never
        # enqueued: it cost no quota. Every other job was re-used, none made again.
        others = [j["status"] for j in box.stats()["jobs"] if j["status"] != "Completed"]
        assert set(others) <= {"Created"} and len(others) <= 2, others


def test_a_stream_added_later_gets_its_own_backfill_while_the_others_go_on(
        tmp_path: Path) -> None:
    with sandbox() as box:
        state: dict | None = None
        days: list[Day] = []
        for number in range(2):  # two days of three types
            day = one_run(box, tmp_path / f"three{number}", day_config(
                box, backfill_order="newest_first", activity_type_ids=TYPES[:3]), state)
            days.append(day)
            state = day.run.last_state
            box.new_day()
        assert state is not None
        low = state["bookmarks"][STREAMS[1]]["covered_from"]
        assert START < low < END and STREAMS[12] not in state["bookmarks"]
        days += backfill(box, tmp_path / "four", state=state, backfill_order="newest_first")
        assert_quota_days(box, days)
        for type_id in TYPES:
            jobs = [j for j in completed(box) if type_id in j["activityTypeIds"]]
            start = min(j["startAt"] for j in jobs)
            assert start == START
            assert_no_window_twice(jobs, START, END)
        assert_nothing_lost(box, days, completed(box), START, END)
        added = [j for d in days[2:] for j in d.jobs if 12 in j["activityTypeIds"]]
        assert added[0]["endAt"] == END  # newest first for the new stream too
        marks = days[-1].run.last_state["bookmarks"]
        assert {marks[STREAMS[t]]["covered_from"] for t in TYPES} == {START}


# ---- exit codes when the quota is gone -----------------------------------------------------

def assert_quota_gone(run: TapRun, words: str) -> None:
    """Nothing could be exported: exit 1 and one ERROR line saying so and when the quota
    resets, in UTC and US Central."""
    assert run.returncode == 1, run.stderr[-3000:]
    errors = lines(run, "ERROR")
    assert len(errors) == 1, run.stderr[-3000:]
    assert words in errors[0] and "Nothing could be exported today" in errors[0]
    assert "resets at" in errors[0] and " UTC (" in errors[0] and "US Central)" in errors[0]
    assert "Traceback" not in run.stderr


def test_a_run_after_the_cap_is_reached_today_exports_nothing_and_exits_1(
        tmp_path: Path) -> None:
    with sandbox() as box:
        first = one_run(box, tmp_path / "1", day_config(box), None)
        assert first.run.returncode == 0 and lines(first.run, "WARNING"), first.run.stderr
        again = one_run(box, tmp_path / "2", day_config(box), first.run.last_state)
        assert_quota_gone(again.run, "max_export_mb_per_day")
        assert again.jobs == []
        assert again.run.records == {}
        assert again.run.last_state["bookmarks"] == first.run.last_state["bookmarks"]


def test_a_first_run_with_the_cap_already_used_by_other_exports_starts_nothing(
        tmp_path: Path) -> None:
    with sandbox() as box:
        other = run_tap(tmp_path / "other", config_for(box, activity_type_ids=[13]))
        assert other.returncode == 0, other.stderr[-3000:]
        used = box.stats()["export_bytes_today"]
        # No state: no size known; the probe must not start on a day already spent.
        run = one_run(box, tmp_path / "1", day_config(
            box, max_export_mb_per_day=used / MB), None)
        assert_quota_gone(run.run, "max_export_mb_per_day")
        assert run.jobs == []


def test_the_probe_is_an_hour_when_little_room_is_left(tmp_path: Path) -> None:
    with sandbox() as box:
        other = run_tap(tmp_path / "other", config_for(box, activity_type_ids=[13]))
        assert other.returncode == 0, other.stderr[-3000:]
        used = box.stats()["export_bytes_today"]
        cap = used + 8000  # less than a day of TYPES (~11 kB), several hours of it
        run = one_run(box, tmp_path / "1", day_config(box, max_export_mb_per_day=cap / MB),
                      None)
        assert run.run.returncode == 0, run.run.stderr[-3000:]
        assert box.stats()["export_bytes_today"] <= cap
        probe = run.jobs[0]
        assert (probe["startAt"], probe["endAt"]) == (START, "2024-01-01T01:00:00Z")
        assert len(run.jobs) > 1  # then windows cut to what the probe taught
        assert "max_export_mb_per_day" in lines(run.run, "WARNING")[0]


def test_marketo_quota_already_gone_exits_1_then_a_new_day_finishes(tmp_path: Path) -> None:
    with sandbox() as box:
        box.set_faults(export_quota_bytes=2 * MB)
        box.spend_export_quota(2 * MB)  # a lead export of the same API user, say
        config = day_config(box, max_export_mb_per_day=400)
        gone = one_run(box, tmp_path / "1", config, None)
        assert_quota_gone(gone.run, "Marketo's daily bulk export quota is used up")
        assert box.stats()["export_bytes_today"] == 2 * MB
        box.new_day()
        after = one_run(box, tmp_path / "2", config, gone.run.last_state if gone.run.states
                        else None)
        assert after.run.returncode == 0, after.run.stderr[-3000:]
        assert set(after.run.guids()) == {a["marketoGUID"]
                                          for a in delivered_rows(box, START, END, TYPES)}


def test_marketo_quota_mid_run_exits_0_with_one_warning(tmp_path: Path) -> None:
    with sandbox() as box:
        box.set_faults(export_quota_bytes=int(CAP))
        days = backfill(box, tmp_path, max_export_mb_per_day=400, max_jobs_in_queue=1)
        for day in days[:-1]:
            assert day.run.returncode == 0, day.run.stderr[-3000:]
            warnings = lines(day.run, "WARNING")
            assert len(warnings) == 1 and "export quota is used up" in warnings[0], warnings
            assert " UTC (" in warnings[0] and "left to export" in warnings[0]
        assert len(days) > 2
        jobs = completed(box)
        assert_no_window_twice(jobs, START, END)
        assert_nothing_lost(box, days, jobs, START, END)


# ---- the state through the SDK ---------------------------------------------------------------

def test_the_sdk_keeps_both_edges_through_load_state_and_finalize() -> None:
    name = STREAMS[1]
    state: dict[str, Any] = {"bookmarks": {name: {"replication_key": "activityDate",
                                  "replication_key_value": "2024-03-01T00:00:00Z",
                                  "covered_from": "2024-02-01T00:00:00Z"}},
             "marketo_export_sizes": {"1": [40000, 86400]}}
    catalog = {"streams": [{"tap_stream_id": name, "stream": name, "replication_key":
                            "activityDate", "replication_method": "INCREMENTAL",
                            "key_properties": ["marketoGUID"],
                            "schema": {"type": "object", "properties": {
                                "marketoGUID": {"type": ["string"]},
                                "activityDate": {"type": ["string"], "format": "date-time"},
                                "activityTypeId": {"type": ["integer"], "enum": [1]}}},
                            "metadata": [{"breadcrumb": [], "metadata": {
                                "selected": True, "replication-key": "activityDate"}}]}]}
    config = {"client_id": "x", "client_secret": "y", "base_url": "http://127.0.0.1:9",
              "start_date": START, "backfill_order": "newest_first"}
    tap = TapMarketoActivities(config=config, catalog=catalog, state=json.loads(
        json.dumps(state)))
    stream = tap.streams[name]
    assert isinstance(stream, ActivityStream)
    low = stream.low_edge(tap.settings.start)
    assert low is not None and low.isoformat().startswith("2024-02-01")
    stream.finalize_state_progress_markers()
    assert tap.raw_state["bookmarks"][name] == state["bookmarks"][name]
    assert tap.raw_state["marketo_export_sizes"] == state["marketo_export_sizes"]


# ---- the plan's arithmetic --------------------------------------------------------------------

NOON = dt.datetime(2026, 3, 10, 18, 0, tzinfo=dt.timezone.utc)  # 12:00 or 13:00 US Central


def test_the_plan_counts_today_while_it_has_room_and_not_once_it_is_spent() -> None:
    fresh = ExportQuota(400 * MB, used_bytes=100 * MB)
    assert "that is 3 daily runs (today's included), finishing around 2026-03-12" in \
        fresh.plan_line(1000 * MB, 2, NOON)
    assert "1 daily run (today's included), finishing around 2026-03-10" in \
        fresh.plan_line(300 * MB, 2, NOON)
    spent = ExportQuota(400 * MB, used_bytes=399 * MB)
    assert "that is 3 more daily runs, from tomorrow, finishing around 2026-03-13" in \
        spent.plan_line(1000 * MB, 2, NOON)
    assert "nothing left to export for 1 stream" in spent.plan_line(0, 1, NOON)


def test_a_cut_window_fits_its_reservation_exactly() -> None:
    quota = ExportQuota(CAP, used_bytes=int(CAP / 3), rates={"1": [40000, 86400]})
    seconds = quota.seconds_that_fit(["1"])
    estimate = quota.estimate(["1"], seconds)
    assert estimate is not None and quota.fits(estimate)
    assert not quota.fits(quota.estimate(["1"], seconds + 60) or 0)
