"""The roads as parts, through the sandbox (issue 23, corners 1-9): one plan decides, each
road carries its part and stops alone, one state remembers across runs and stops."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import parse_output, run_tap, tap_command
from test_increments import (
    DAY,
    DAY_BEFORE,
    PER_DAY,
    TWO_HOURS_LATER,
    TYPES,
    by_guid,
    config,
    first_day,
    rest_calls,
    run_ok,
    wanted,
)

from tap_marketo_activities.sandbox import Sandbox

THIRTY_HOURS_LATER = "2024-02-11T06:00:00Z"


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(job_latency=0.2, data_start="2024-02-01T00:00:00Z",
                 data_end="2024-02-20T00:00:00Z", activities_per_day=PER_DAY) as sandbox:
        yield sandbox


def lines(stderr: str, level: str) -> list[str]:
    return [line for line in stderr.splitlines() if f"| {level}" in line]


def test_always_with_the_budget_spent_still_exports_what_rest_cannot_serve(
        box: Sandbox, tmp_path: Path) -> None:
    """Corner 1: a stream with a primary attribute filter is bulk's, whatever REST's budget."""
    state = first_day(box, tmp_path / "1").last_state
    state["marketo_rest"]["calls"] = 10_000  # today's budget, spent by earlier runs
    filters = {"2": {"values": ["Program.Form"]}}
    run = run_ok(tmp_path / "2", config(box, TWO_HOURS_LATER, rest_increments="always",
                                       primary_attribute_filters=filters), state)
    jobs = box.stats()["jobs"]
    assert [tuple(j["activityTypeIds"]) for j in jobs] == [(2,)]
    assert (jobs[0]["startAt"], jobs[0]["endAt"]) == (DAY, TWO_HOURS_LATER)
    assert jobs[0]["status"] == "Completed"
    assert len(lines(run.stderr, "WARNING")) == 1
    assert "max_rest_calls_per_day" in lines(run.stderr, "WARNING")[0]


def test_the_learnt_cost_reaches_the_next_run_through_a_state_file(
        box: Sandbox, tmp_path: Path) -> None:
    """Corner 2: the lesson is in the last STATE, and a state file's numbers (Decimal to
    the SDK) are read: a 30-hour increment (a paused schedule) then takes REST."""
    first = run_ok(tmp_path / "1", config(box, DAY, start_date="2024-02-09T20:00:00Z"))
    learnt = first.last_state["marketo_rest"]
    assert learnt.get("calls_per_hour", 0) > 0, "the first try's lesson is in the last STATE"
    run = run_ok(tmp_path / "2", config(box, THIRTY_HOURS_LATER), first.last_state)
    assert "cost not learnt" not in run.stderr
    assert box.stats()["jobs"] == []
    assert set(by_guid(run)) == set(wanted(box, DAY, THIRTY_HOURS_LATER))


def test_a_sigterm_mid_read_leaves_every_accepted_call_counted(
        box: Sandbox, tmp_path: Path) -> None:
    """Corner 3: the last STATE counts at least the calls Marketo accepted."""
    box.set_faults(stall_seconds=0.3, stall_rate=1.0, routes=["activities"])
    command = tap_command(tmp_path, config(box, "2024-02-12T00:00:00Z",
                                           rest_increments="always"))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 60
    while box.call_count("activities", admitted=True) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=60)
    states = [m["value"] for m in parse_output(stdout) if m["type"] == "STATE"]
    accepted = box.call_count("activities", admitted=True) + \
        box.call_count("paging_token", admitted=True)
    assert states[-1]["marketo_rest"]["calls"] >= accepted > 0


def test_get_deleted_leads_failing_stops_that_part_only(box: Sandbox, tmp_path: Path) -> None:
    """Corner 4: one endpoint's outage ends its own part with one line; every other stream
    is delivered and bookmarked; exit 1."""
    box.set_faults(http_5xx_rate=1.0, routes=["deleted_leads"])
    settings = config(box, DAY, activity_type_ids=[*TYPES, 37], max_retry_seconds=1,
                      rest_increments="always")
    run = run_tap(tmp_path, settings)
    assert run.returncode == 1
    errors = lines(run.stderr, "ERROR")
    assert len(errors) == 1 and "bug" not in errors[0], errors
    assert set(by_guid(run)) == set(wanted(box, DAY_BEFORE, DAY))
    marks = run.last_state["bookmarks"]
    assert "replication_key_value" not in marks.get("activities_delete_lead", {})
    assert {b["replication_key_value"] for n, b in marks.items()
            if n != "activities_delete_lead"} == {DAY}


def test_always_reads_a_new_stream_newest_first_when_asked(box: Sandbox, tmp_path: Path
                                                            ) -> None:
    """Corner 5: `always` keeps backfill_order: newest_first reads the newest window
    first, through REST."""
    run = run_ok(tmp_path, config(box, DAY, start_date="2024-02-02T00:00:00Z",
                                  window_days=3, rest_increments="always",
                                  backfill_order="newest_first"))
    dates = [r["activityDate"] for rows in run.records.values() for r in rows]
    order = [m["record"]["activityDate"] for m in run.messages if m["type"] == "RECORD"]
    assert order[0] >= "2024-02-07T00:00:00Z" > order[-1], "the newest window came first"
    assert set(by_guid(run)) == set(wanted(box, "2024-02-02T00:00:00Z", DAY))
    assert len(dates) == len(set(by_guid(run)))
    assert box.stats()["jobs"] == []
    marks = run.last_state["bookmarks"].values()
    assert {b["covered_from"] for b in marks} == {"2024-02-02T00:00:00Z"}


def test_streams_at_ten_bookmarks_share_one_read(box: Sandbox, tmp_path: Path) -> None:
    """Corner 7: ten distinct bookmarks cost about what one read from the oldest costs, not
    a read each; each stream takes only what lies past its own bookmark."""
    state = first_day(box, tmp_path / "1").last_state
    before = rest_calls(box)
    run_ok(tmp_path / "2", config(box, TWO_HOURS_LATER), state)  # all at DAY
    one_read = rest_calls(box) - before
    for minutes, mark in enumerate(state["bookmarks"].values()):
        mark["replication_key_value"] = f"2024-02-10T00:{minutes * 5:02d}:00Z"
        mark.pop("settled", None)  # by hand, as an older version's state: no lookback
    before = rest_calls(box)
    run = run_ok(tmp_path / "3", config(box, TWO_HOURS_LATER), state)
    assert rest_calls(box) - before <= one_read, "one shared read, not one per bookmark"
    assert box.stats()["jobs"] == []
    for name, mark in state["bookmarks"].items():
        dates = [r["activityDate"] for r in run.records.get(name, [])]
        assert all(d >= mark["replication_key_value"] for d in dates), name
    expected = {g for g, a in wanted(box, DAY, TWO_HOURS_LATER).items()
                if a["activityDate"] >= "2024-02-10T00:55:00Z"}
    assert expected <= set(by_guid(run))


def test_an_earlier_runs_job_for_a_window_rest_took_is_cancelled(
        box: Sandbox, tmp_path: Path) -> None:
    """Corner 9: a killed run's job still Queued or Processing in Marketo, for a window this
    run takes through REST, is cancelled, and the state forgets it."""
    state = first_day(box, tmp_path / "1").last_state
    box.set_faults(stuck_jobs=1)
    command = tap_command(tmp_path / "2", config(box, TWO_HOURS_LATER, rest_increments="off"),
                          state)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 60
    while not any(j["status"] in ("Queued", "Processing") for j in box.stats()["jobs"]) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    stdout, _ = process.communicate(timeout=30)
    killed_state = [m["value"] for m in parse_output(stdout) if m["type"] == "STATE"][-1]
    assert killed_state.get("marketo_exports"), "the job was named before it was enqueued"
    box.clear_faults()
    run = run_ok(tmp_path / "3", config(box, TWO_HOURS_LATER), killed_state)
    assert "marketo_exports" not in run.last_state
    assert [j["status"] for j in box.stats()["jobs"]] == ["Cancelled"]
    assert set(by_guid(run)) == set(wanted(box, DAY, TWO_HOURS_LATER))


def test_a_state_file_with_our_keys_is_read_as_plain_numbers(box: Sandbox, tmp_path: Path
                                                            ) -> None:
    """The state codec: numbers in a state file (Decimal to the SDK) come back as numbers."""
    state = first_day(box, tmp_path / "1").last_state
    state["marketo_rest"]["calls_per_hour"] = 12.5
    (tmp_path / "s.json").write_text(json.dumps(state))
    run = run_ok(tmp_path / "2", config(box, TWO_HOURS_LATER), state)
    assert isinstance(run.states[0]["marketo_rest"]["calls_per_hour"], float)


def run_killed(tmp: Path, settings: dict, state: dict | None, when: str) -> list[dict]:
    """A run SIGKILLed at the first STATE that `when` says: "job" (one of our export jobs
    named), "moved" (a bookmark moved); its messages up to the kill."""
    command = tap_command(tmp, settings, state)
    messages: list[dict] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as tap:
        assert tap.stdout is not None
        for line in tap.stdout:
            message = json.loads(line)
            messages.append(message)
            value = message.get("value", {})
            if message["type"] == "STATE" and (
                    (when == "job" and value.get("marketo_exports")) or
                    (when == "moved" and state is not None and
                     value["bookmarks"] != state["bookmarks"])):
                tap.send_signal(signal.SIGKILL)
                break
    assert tap.returncode == -signal.SIGKILL, f"the run ended before the moment ({when})"
    return messages


def committed(messages: list[dict]) -> tuple[list[str], dict]:
    """The activities a run delivered up to its last STATE (what a target commits), and
    that STATE."""
    last = max(i for i, m in enumerate(messages) if m["type"] == "STATE")
    guids = [m["record"]["marketoGUID"] for m in messages[:last]
             if m["type"] == "RECORD" and m["stream"] != "merged_leads"]
    return guids, messages[last]["value"]


def test_a_chain_of_runs_with_kills_delivers_each_activity_once_and_leaves_no_job_running(
        box: Sandbox, tmp_path: Path) -> None:
    """Issue 23: SIGKILLs in the middle of bulk and REST runs, then clean runs: every
    activity once (counting what each run delivered up to its last STATE), no export job of
    ours left Queued or Processing, and the day's count holds every accepted REST call."""
    box.set_faults(stall_seconds=0.2, stall_rate=1.0, routes=["activities"])
    ends = ["2024-02-10T00:00:00Z", "2024-02-10T06:00:00Z", "2024-02-10T08:00:00Z",
            "2024-02-10T12:00:00Z", "2024-02-10T14:00:00Z"]
    chain = [("2", {"rest_increments": "always"}, None),
             ("2", {"rest_increments": "off"}, "job"),   # killed with a job named
             ("3", {}, None),                            # REST takes that job's window
             ("4", {"rest_increments": "always"}, "moved"),  # killed mid-read
             ("5", {}, None)]
    state: dict | None = None
    delivered: list[str] = []
    for number, ((_, overrides, kill), end) in enumerate(zip(chain, ends, strict=True)):
        settings = config(box, end, **overrides)
        if kill:
            messages = run_killed(tmp_path / str(number), settings, state, kill)
        else:
            run = run_ok(tmp_path / str(number), settings, state)
            messages = run.messages
        guids, state = committed(messages)
        delivered += guids
    assert Counter(delivered).most_common(1)[0][1] == 1, "nothing twice"
    assert set(delivered) == set(wanted(box, DAY_BEFORE, ends[-1])), "nothing lost"
    assert not [j for j in box.stats()["jobs"] if j["status"] in ("Queued", "Processing")]
    accepted = box.call_count("activities", admitted=True) + \
        box.call_count("paging_token", admitted=True)
    assert state is not None and state["marketo_rest"]["calls"] >= accepted
