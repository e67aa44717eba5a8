"""REST increments: small windows through Get Lead Activities, within a call budget, each
activity once across runs and across both roads (export files and REST pages)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, TapRun, delivered_rows, parse_output, run_tap, tap_command

from tap_marketo_activities.sandbox import Sandbox

DAY = "2024-02-10T00:00:00Z"  # a midnight: the sandbox stamps activities exactly on it
TWO_HOURS_LATER = "2024-02-10T02:00:00Z"
DAY_BEFORE = "2024-02-09T00:00:00Z"
TYPES = [1, 2, 6, 7, 10, 11, 12, 13, 22, 24, 25, 100002]  # two REST groups
PER_DAY = 2880  # one activity every 30 s


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(job_latency=0.2, data_start="2024-02-01T00:00:00Z",
                 data_end="2024-02-20T00:00:00Z", activities_per_day=PER_DAY) as sandbox:
        yield sandbox


def config(box: Sandbox, end: str, **overrides: Any) -> dict[str, Any]:
    return {**box.config, "start_date": DAY_BEFORE, "end_date": end, **FAST,
            "activity_type_ids": TYPES, **overrides}


def run_ok(tmp: Path, settings: dict[str, Any], state: dict | None = None) -> TapRun:
    run = run_tap(tmp, settings, state=state)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [line for line in run.stderr.splitlines() if "| ERROR" in line] == []
    return run


def first_day(box: Sandbox, tmp: Path) -> TapRun:
    """Bookmarks at DAY for every stream, through REST (no job to wait for)."""
    return run_ok(tmp, config(box, DAY, rest_increments="always"))


def wanted(box: Sandbox, start: str, end: str) -> dict[str, dict[str, Any]]:
    return {a["marketoGUID"]: a for a in delivered_rows(box, start, end, TYPES)}


def by_guid(run: TapRun) -> dict[str, dict[str, Any]]:
    records = [r for rows in run.records.values() for r in rows]
    assert len(records) == len({r["marketoGUID"] for r in records})
    return {r["marketoGUID"]: r for r in records}


def rest_calls(box: Sandbox) -> int:
    return box.call_count("activities") + box.call_count("paging_token")


def bookmarks(state: dict[str, Any]) -> dict[str, str]:
    return {name: b.get("replication_key_value") for name, b in state["bookmarks"].items()}


def test_a_two_hour_increment_takes_no_job_and_close_to_the_floor_of_calls(
        box: Sandbox, tmp_path: Path) -> None:
    state = first_day(box, tmp_path / "1").last_state
    jobs, pages = len(box.stats()["jobs"]), box.call_count("activities")
    run = run_ok(tmp_path / "2", config(box, TWO_HOURS_LATER), state)  # default settings
    assert len(box.stats()["jobs"]) == jobs == 0
    assert set(by_guid(run)) == set(wanted(box, DAY, TWO_HOURS_LATER))
    # A read walks every type's activities: the floor is all of them / 300 per group.
    walked = len(box.expected_rest(DAY, TWO_HOURS_LATER))
    floor = 2 * math.ceil(walked / 300)
    assert floor <= box.call_count("activities") - pages <= floor + 2
    assert set(bookmarks(run.last_state).values()) == {TWO_HOURS_LATER}
    assert "through Get Lead Activities" in run.stderr


def test_the_same_interval_through_bulk_gives_identical_records(
        box: Sandbox, tmp_path: Path) -> None:
    state = first_day(box, tmp_path / "1").last_state
    rest = run_ok(tmp_path / "rest", config(box, TWO_HOURS_LATER), state)
    bulk = run_ok(tmp_path / "bulk", config(box, TWO_HOURS_LATER, rest_increments="off"),
                  state)
    assert box.stats()["jobs"], "the bulk run exports"
    assert set(rest.records) == set(bulk.records)
    for stream, records in bulk.records.items():
        key = sorted(records, key=lambda r: r["marketoGUID"])
        assert sorted(rest.records[stream], key=lambda r: r["marketoGUID"]) == key, stream


@pytest.mark.parametrize("road", ["auto", "off"])
def test_two_runs_split_at_a_midnight_deliver_each_activity_once(
        box: Sandbox, tmp_path: Path, road: str) -> None:
    first = run_ok(tmp_path / "1", config(box, DAY, rest_increments=road))
    second = run_ok(tmp_path / "2", config(box, TWO_HOURS_LATER, rest_increments=road),
                    first.last_state)
    at_midnight = {g for g, a in wanted(box, DAY_BEFORE, TWO_HOURS_LATER).items()
                   if a["activityDate"] == DAY}
    assert at_midnight
    got = first.guids() + second.guids()
    assert set(got) == set(wanted(box, DAY_BEFORE, TWO_HOURS_LATER))
    assert max(got.values()) == 1
    assert at_midnight <= set(by_guid(second))  # the next run's, not the first's


def test_always_stops_cleanly_at_the_budget_and_the_next_day_goes_on(
        box: Sandbox, tmp_path: Path) -> None:
    settings = config(box, "2024-02-12T00:00:00Z", rest_increments="always",
                      max_rest_calls_per_day=6)
    first = run_ok(tmp_path / "1", settings)
    assert rest_calls(box) <= 6
    warnings = [line for line in first.stderr.splitlines() if "| WARNING" in line
                and "max_rest_calls_per_day" in line]
    assert len(warnings) == 1, first.stderr[-3000:]
    # Get Daily Usage counts discovery and its own call too, so the two type groups share
    # four calls here: a group that got no page yet resumes at start_date.
    reached = [mark for mark in bookmarks(first.last_state).values() if mark]
    assert reached and DAY_BEFORE < min(reached) < "2024-02-12T00:00:00Z"
    # The same day: the budget is spent, across runs.
    again = run_ok(tmp_path / "2", settings, first.last_state)
    assert rest_calls(box) <= 6 and again.records == {}
    assert len([line for line in again.stderr.splitlines() if "| WARNING" in line
                and "max_rest_calls_per_day" in line]) == 1, again.stderr[-3000:]
    # Another day (a new day in the state): it goes on where the first run stopped.
    state = {**again.last_state, "marketo_rest": {**again.last_state["marketo_rest"],
                                                   "day": "2000-01-01"}}
    rest = run_ok(tmp_path / "3", {**settings, "max_rest_calls_per_day": 10_000}, state)
    got = first.guids() + rest.guids()
    assert set(got) == set(wanted(box, DAY_BEFORE, "2024-02-12T00:00:00Z"))
    assert max(got.values()) == 1
    assert box.stats()["jobs"] == []


def test_always_reads_the_older_part_of_a_newest_first_backfill_through_rest_too(
        box: Sandbox, tmp_path: Path) -> None:
    state = first_day(box, tmp_path / "1").last_state
    older = "2024-02-09T12:00:00Z"  # a newest-first backfill reached back to here
    for bookmark in state["bookmarks"].values():
        bookmark["covered_from"] = older
    settings = config(box, TWO_HOURS_LATER, rest_increments="always",
                      backfill_order="newest_first")
    run = run_ok(tmp_path / "2", settings, state)
    assert set(by_guid(run)) == set(wanted(box, DAY_BEFORE, older)) | set(
        wanted(box, DAY, TWO_HOURS_LATER))
    assert box.stats()["jobs"] == [], "always: no export job, the older part included"
    assert "Backfill window " in run.stderr and "through Get Lead Activities" in run.stderr
    assert all(j["endAt"] <= older for j in box.stats()["jobs"])
    assert "through Get Lead Activities" in run.stderr
    assert {b["covered_from"] for b in run.last_state["bookmarks"].values()} == {DAY_BEFORE}


def test_auto_takes_what_the_budget_cannot_cover_through_bulk(
        box: Sandbox, tmp_path: Path) -> None:
    state = first_day(box, tmp_path / "1").last_state
    calls = rest_calls(box)
    run = run_ok(tmp_path / "2", config(box, "2024-02-10T12:00:00Z",
                                        max_rest_calls_per_day=calls + 3), state)
    assert rest_calls(box) - calls <= 3
    assert box.stats()["jobs"], "what REST did not reach went to bulk"
    assert set(by_guid(run)) == set(wanted(box, DAY, "2024-02-10T12:00:00Z"))
    assert set(bookmarks(run.last_state).values()) == {"2024-02-10T12:00:00Z"}


@pytest.mark.parametrize("end", ["2024-02-10T20:00:00Z", "2024-02-13T00:00:00Z"])
def test_with_the_export_quota_gone_the_increment_comes_through_rest(
        box: Sandbox, tmp_path: Path, end: str) -> None:
    state = first_day(box, tmp_path / "1").last_state
    box.set_faults(export_quota_bytes=0)
    run = run_ok(tmp_path / "2", config(box, end), state)
    assert set(by_guid(run)) == set(wanted(box, DAY, end))
    assert set(bookmarks(run.last_state).values()) == {end}
    assert [j for j in box.stats()["jobs"] if j["status"] == "Completed"] == []


def test_with_the_export_quota_gone_what_rest_cannot_serve_waits_and_the_run_exits_0(
        box: Sandbox, tmp_path: Path) -> None:
    state = first_day(box, tmp_path / "1").last_state
    forms = sorted({a["primaryAttributeValue"]
                    for a in delivered_rows(box, DAY, "2024-02-11T00:00:00Z", [2])})
    box.set_faults(export_quota_bytes=0)
    # A filtered stream stays on bulk, which has no quota left today.
    run = run_ok(tmp_path / "2", config(
        box, "2024-02-10T12:00:00Z",
        primary_attribute_filters={"2": {"values": forms[:1]}}), state)
    warnings = [line for line in run.stderr.splitlines() if "| WARNING" in line
                and "resets at" in line and "through Get Lead Activities" in line]
    assert len(warnings) == 1, run.stderr[-3000:]
    rest_types = [t for t in TYPES if t != 2]
    assert set(by_guid(run)) == {a["marketoGUID"] for a in delivered_rows(
        box, DAY, "2024-02-10T12:00:00Z", rest_types)}
    assert bookmarks(run.last_state)["activities_fill_out_form"] == DAY


@pytest.mark.parametrize("faults", [
    {"http_5xx_rate": 0.3},
    {"error_rate": {"615": 0.3}},
    {"error_rate": {"601": 0.2, "602": 0.2}},
], ids=["502", "615", "expired-token"])
def test_faults_on_the_rest_endpoints_lose_nothing_and_repeat_nothing(
        box: Sandbox, tmp_path: Path, faults: dict[str, Any]) -> None:
    state = first_day(box, tmp_path / "1").last_state
    box.set_faults(routes=["activities", "paging_token"], **faults)
    run = run_ok(tmp_path / "2", config(box, "2024-02-11T00:00:00Z"), state)
    assert sum(box.stats()["injected"].values()) > 0
    assert set(by_guid(run)) == set(wanted(box, DAY, "2024-02-11T00:00:00Z"))
    assert box.stats()["jobs"] == []


def test_606_on_the_rest_endpoints_waits_and_loses_nothing(tmp_path: Path) -> None:
    # Another tool uses most of the 20 s window: Marketo answers 606 and the tap waits.
    with Sandbox(job_latency=0.2, data_start="2024-02-01T00:00:00Z",
                 data_end="2024-02-20T00:00:00Z", activities_per_day=PER_DAY,
                 rate_limit_calls=8) as box:
        state = first_day(box, tmp_path / "1").last_state
        run = run_ok(tmp_path / "2", config(box, "2024-02-11T00:00:00Z",
                                            max_retry_seconds=120), state)
        assert box.stats()["refused"].get("606", 0) >= 1
        assert set(by_guid(run)) == set(wanted(box, DAY, "2024-02-11T00:00:00Z"))
        assert box.stats()["jobs"] == []


def test_a_sigkill_during_a_rest_read_loses_nothing_and_reads_on_from_the_last_state(
        box: Sandbox, tmp_path: Path) -> None:
    end = "2024-02-16T00:00:00Z"
    settings = config(box, end, rest_increments="always")
    box.set_faults(routes=["activities"], stall_seconds=0.4, stall_rate=1.0)
    command = tap_command(tmp_path / "1", settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")}
    lines: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, env=env) as tap:
        assert tap.stdout is not None
        for line in tap.stdout:
            lines.append(line)
            message = json.loads(line)
            if message["type"] == "STATE" and any(
                    v and v > DAY_BEFORE for v in bookmarks(message["value"]).values()):
                tap.send_signal(signal.SIGKILL)
                break
    killed = parse_output("".join(lines))
    state = [m["value"] for m in killed if m["type"] == "STATE"][-1]
    covered = bookmarks(state)
    assert max(covered.values()) < end
    box.clear_faults()
    pages = box.call_count("activities")
    after = run_ok(tmp_path / "2", settings, state)
    got = Counter(m["record"]["marketoGUID"] for m in killed if m["type"] == "RECORD")
    got += after.guids()
    assert set(got) == set(wanted(box, DAY_BEFORE, end))
    # The next run reads on from each stream's bookmark: nothing it covered is read again.
    resent = [r for stream, rows in after.records.items() for r in rows
              if r["activityDate"] < covered[stream]]
    assert resent == []
    walked = len(box.expected_rest(min(covered.values()), end))
    assert box.call_count("activities") - pages <= 2 * (math.ceil(walked / 300) + 1)
