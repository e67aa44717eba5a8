"""The REST road trusts no answer (issue 23, items 10-15): odd answers of Get Lead
Activities through the sandbox, each ending with exactly the activities of the range, or
with the read stopped at its edge (OddRead), from where a clean read delivers exactly the
rest; nothing twice; never more than a few calls past the odd answer. And the call budget:
Marketo's Get Daily Usage as a floor, and a count no stop can hide."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, TapRun, parse_output, run_tap, tap_command

from tap_marketo_activities.client import MarketoClient, Pacer
from tap_marketo_activities.increments import (
    REPEATED,
    REST_STATE_KEY,
    CallBudget,
    OddRead,
    RestRead,
)
from tap_marketo_activities.instants import parse_datetime
from tap_marketo_activities.quota import CENTRAL
from tap_marketo_activities.records import UNASKED_TYPE, Problems
from tap_marketo_activities.rest import ODD_TRIES, daily_usage
from tap_marketo_activities.sandbox import Sandbox
from tap_marketo_activities.sandbox.odd import MALFORMED

START = "2024-02-10T00:00:00Z"
END = "2024-02-10T12:00:00Z"  # 1,500 activities of every type: five pages a group
DAY_BEFORE = "2024-02-09T00:00:00Z"
ONE_GROUP = [1, 2, 6, 7, 10, 11, 12, 13, 22, 24]
TWO_GROUPS = [*ONE_GROUP, 25, 100002]
PER_DAY = 2880


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(job_latency=0.2, data_start="2024-02-01T00:00:00Z",
                 data_end="2024-02-20T00:00:00Z", activities_per_day=PER_DAY) as sandbox:
        yield sandbox


def client_for(box: Sandbox) -> MarketoClient:
    return MarketoClient(box.base_url, box.config["client_id"], box.config["client_secret"],
                         timeout=(3.0, 10.0), max_retry_seconds=20, pacer=Pacer(0.5))


class Read:
    """What one RestRead delivered, and how it ended."""

    def __init__(self, box: Sandbox, start: str = START, types: list[int] | None = None,
                 cap: int = 1000) -> None:
        client = client_for(box)
        self.budget = CallBudget.from_state(10_000, None, dt.datetime.now(dt.timezone.utc))
        self.problems = Problems("test read", quiet=True)
        self.read = RestRead(client, self.budget, cap, parse_datetime(start), END,
                             types or ONE_GROUP, self.problems)
        self.rows: list[dict[str, Any]] = []
        self.error: OddRead | None = None
        try:
            for _, rows in self.read.activities():
                self.rows += rows
        except OddRead as exc:
            self.error = exc

    def guids(self) -> Counter[str]:
        return Counter(row["marketoGUID"] for row in self.rows)


def expected(box: Sandbox, start: str = START, end: str = END,
             types: list[int] | None = None) -> dict[str, dict[str, Any]]:
    return {a["marketoGUID"]: a for a in box.expected_rest(start, end, types or ONE_GROUP)}


def assert_exact(read: Read, box: Sandbox, types: list[int] | None = None) -> None:
    assert read.error is None
    assert max(read.guids().values()) == 1
    wanted = expected(box, types=types)
    assert set(read.guids()) == set(wanted)
    for row in read.rows:  # normalised: the same date and type as Marketo's own form
        assert row["activityDate"] == wanted[row["marketoGUID"]]["activityDate"]
        assert row["activityTypeId"] == wanted[row["marketoGUID"]]["activityTypeId"]
    assert all(group.done and group.edge == END for group in read.read.groups)


SURPRISES = ["type_text", "date_plus_0100", "date_minus_0500", "future_last", "repeat_top",
             "other_type", "shuffled"]


@pytest.mark.parametrize("kind", SURPRISES)
def test_an_answer_that_is_odd_but_whole_gives_exactly_the_range(box: Sandbox,
                                                                 kind: str) -> None:
    box.set_rest_odd(kind)
    read = Read(box)
    assert box.rest_odd_seen()["odd"] >= 3, "every page was made odd"
    assert_exact(read, box)
    skipped = {"repeat_top": REPEATED, "other_type": UNASKED_TYPE}
    if kind in skipped:  # skipped and counted, once per page that carried one
        assert read.problems.counts[skipped[kind]] == box.rest_odd_seen()["odd"]


def test_a_future_dated_activity_at_every_page_s_end_ends_no_read(box: Sandbox) -> None:
    box.set_rest_odd("future_last")
    read = Read(box, types=TWO_GROUPS)
    assert_exact(read, box, TWO_GROUPS)
    assert box.rest_odd_seen()["odd"] >= 8 and all(r["activityDate"] < END for r in read.rows)


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_answer_that_passes_is_retried_and_the_read_goes_on(
        box: Sandbox, kind: str) -> None:
    box.set_rest_odd(kind, times=ODD_TRIES - 1, after=2)
    read = Read(box)
    assert box.rest_odd_seen()["odd"] == ODD_TRIES - 1
    assert_exact(read, box)


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_answer_that_stays_stops_the_read_at_its_edge(box: Sandbox,
                                                                  kind: str) -> None:
    box.set_rest_odd(kind, after=2)  # the paging token and one page as usual, then odd
    read = Read(box)
    assert read.error is not None, "never taken for the end"
    seen = box.rest_odd_seen()
    assert seen["served"] - seen["first_odd"] + 1 == ODD_TRIES  # no call past the retries
    edge = read.error.edge
    assert START < edge < END and read.error.types == tuple(ONE_GROUP)
    assert str(read.error).startswith("Get Lead Activities answered oddly")
    assert f"stopped at {edge}" in str(read.error)
    # Exactly what lies before the edge was delivered; the rest comes from the edge on.
    assert set(read.guids()) == {g for g, a in expected(box).items()
                                 if a["activityDate"] < edge}
    assert not read.read.groups[0].done and read.read.groups[0].edge == edge
    box.clear_faults()
    rest = Read(box, start=edge)
    both = read.guids() + rest.guids()
    assert set(both) == set(expected(box)) and max(both.values()) == 1


def test_a_token_that_never_changes_stops_within_a_few_calls_on_every_group(
        box: Sandbox) -> None:
    box.set_rest_odd("same_token_empty", after=4)
    read = Read(box, types=TWO_GROUPS)
    assert read.error is not None
    # Two groups page side by side: each may make its retries, no more.
    assert box.call_count("activities") <= 4 + 2 * ODD_TRIES
    assert not any(group.done for group in read.read.groups)
    assert str(read.error).startswith("Get Lead Activities answered oddly, still after")
    assert "the nextPageToken it was sent" in str(read.error)


@pytest.mark.parametrize("kind", ["date_minus_0500", "date_plus_0100"])
def test_dates_with_offsets_and_a_stop_deliver_each_activity_once(box: Sandbox,
                                                                  kind: str) -> None:
    box.set_rest_odd(kind)
    first = Read(box, cap=3)  # the paging token and two pages: the cap stops the read
    assert first.read.spent and first.error is None
    edge = first.read.groups[0].edge
    assert START < edge < END
    assert set(first.guids()) == {g for g, a in expected(box).items()
                                  if a["activityDate"] < edge}
    rest = Read(box, start=edge)
    both = first.guids() + rest.guids()
    assert set(both) == set(expected(box)) and max(both.values()) == 1


def test_the_sandbox_counts_the_day_s_calls_per_api_user(box: Sandbox) -> None:
    client = client_for(box)
    box.spend_calls(7)
    box.spend_calls(100, user="other@example.com")
    first = daily_usage(client)
    assert client.api_user == "apiuser@sandbox.example"  # the token's scope
    assert first.users == {client.api_user: 8, "other@example.com": 100}  # with this call
    client.read("/rest/v1/activities/pagingtoken.json", {"sinceDatetime": START},
                lambda envelope: envelope)
    assert daily_usage(client).users[client.api_user] == 10
    assert first.day == dt.datetime.now(CENTRAL).strftime("%Y-%m-%d")
    with pytest.raises(ValueError, match="unknown odd answer"):
        box.set_rest_odd("moreResult_maybe")


# ---- the whole tap ----------------------------------------------------------------------


def config(box: Sandbox, end: str, **overrides: Any) -> dict[str, Any]:
    return {**box.config, "start_date": DAY_BEFORE, "end_date": end, **FAST,
            "activity_type_ids": TWO_GROUPS, **overrides}


def wanted(box: Sandbox, start: str, end: str) -> set[str]:
    return {a["marketoGUID"] for a in box.expected(start, end, TWO_GROUPS)
            if a["activityDate"] < end}


def first_day(box: Sandbox, tmp: Path) -> TapRun:
    run = run_tap(tmp, config(box, START, rest_increments="always"))
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def bookmarks(state: dict[str, Any]) -> dict[str, str]:
    return {name: b.get("replication_key_value") for name, b in state["bookmarks"].items()}


@pytest.mark.parametrize("mode", ["auto", "always"])
@pytest.mark.parametrize("kind", ["type_text", "date_plus_0100", "date_minus_0500",
                                  "future_last", "repeat_top", "other_type", "shuffled"])
def test_the_tap_delivers_exactly_the_increment_through_odd_but_whole_answers(
        box: Sandbox, tmp_path: Path, kind: str, mode: str) -> None:
    state = first_day(box, tmp_path / "1").last_state
    box.set_rest_odd(kind)
    run = run_tap(tmp_path / "2", config(box, END, rest_increments=mode), state=state)
    assert run.returncode == 0, run.stderr[-3000:]
    assert box.rest_odd_seen()["odd"] >= 3
    assert box.stats()["jobs"] == []
    assert set(run.guids()) == wanted(box, START, END) and max(run.guids().values()) == 1
    assert set(bookmarks(run.last_state).values()) == {END}


@pytest.mark.parametrize("kind", ["more_text", "same_token_empty", "no_type"])
def test_always_stops_at_the_edge_with_one_line_and_the_next_run_delivers_the_rest(
        box: Sandbox, tmp_path: Path, kind: str) -> None:
    state = first_day(box, tmp_path / "1").last_state
    box.set_rest_odd(kind, after=6)
    settings = config(box, END, rest_increments="always")
    stopped = run_tap(tmp_path / "2", settings, state=state)
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    errors = [line for line in stopped.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and "answered oddly" in errors[0], stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    edges = bookmarks(stopped.last_state)
    assert min(edges.values()) < END
    box.clear_faults()
    after = run_tap(tmp_path / "3", settings, state=stopped.last_state)
    assert after.returncode == 0, after.stderr[-3000:]
    both = stopped.guids() + after.guids()
    assert set(both) == wanted(box, START, END) and max(both.values()) == 1


@pytest.mark.parametrize("kind", ["more_missing", "more_text", "same_token",
                                  "same_token_empty", "result_object", "item_not_object",
                                  "no_guid", "no_date", "no_type"])
def test_auto_hands_a_read_stopped_by_an_odd_answer_to_bulk_and_delivers_it_all(
        box: Sandbox, tmp_path: Path, kind: str) -> None:
    """auto: one WARNING that names the odd answer, bulk export takes it from the edge,
    exactly the increment, exit 0; the read stops within a few calls of the odd answer."""
    state = first_day(box, tmp_path / "1").last_state
    box.set_rest_odd(kind, after=4)
    before = rest_calls(box)
    run = run_tap(tmp_path / "2", config(box, END), state=state)
    assert run.returncode == 0, run.stderr[-3000:]
    stopped = [line for line in run.stderr.splitlines()
               if "| WARNING" in line and "answered oddly" in line]  # retries said before
    assert len(stopped) == 1, run.stderr[-3000:]
    assert "Bulk export takes it from there" in stopped[0]
    assert box.stats()["jobs"], "bulk took over"
    # Two groups: each tries an odd answer ODD_TRIES times, and may have one page in hand.
    assert rest_calls(box) - before <= 4 + 2 * (ODD_TRIES + 1)
    assert set(run.guids()) == wanted(box, START, END) and max(run.guids().values()) == 1
    assert set(bookmarks(run.last_state).values()) == {END}


def rest_calls(box: Sandbox) -> int:
    return box.call_count("activities", admitted=True) + box.call_count(
        "paging_token", admitted=True)


def others_before_rest(box: Sandbox) -> int:
    """The calls of this API user Marketo counts before the REST read: the activity types,
    and Get Daily Usage itself."""
    return box.call_count("types", admitted=True) + box.call_count("usage", admitted=True)


def test_the_day_s_count_is_never_below_what_marketo_counts_for_this_api_user(
        box: Sandbox, tmp_path: Path) -> None:
    box.spend_calls(40)  # this API user, elsewhere today (another pipeline, a lost state)
    box.spend_calls(5000, user="someone-else@example.com")  # not this user's
    run = run_tap(tmp_path / "1", config(box, "2024-02-11T00:00:00Z",
                                         rest_increments="always",
                                         max_rest_calls_per_day=60))
    assert run.returncode == 0, run.stderr[-3000:]
    assert 0 < rest_calls(box) <= 60 - 40 - others_before_rest(box)
    assert run.last_state[REST_STATE_KEY]["calls"] == 40 + others_before_rest(
        box) + rest_calls(box)
    assert box.call_count("usage") == 1  # once per run
    assert "max_rest_calls_per_day (60) is reached" in run.stderr
    assert box.config["client_secret"] not in run.stderr


def test_a_run_s_last_state_counts_exactly_the_calls_it_made(box: Sandbox,
                                                            tmp_path: Path) -> None:
    run = run_tap(tmp_path / "1", config(box, START, rest_increments="always"))
    assert run.returncode == 0, run.stderr[-3000:]
    made = rest_calls(box)
    assert made > 2 * 10  # several blocks were reserved on the way
    # Marketo's count of this user at the start, then ours.
    assert run.last_state[REST_STATE_KEY]["calls"] == made + others_before_rest(box)
    assert all(s[REST_STATE_KEY]["calls"] >= run.last_state[REST_STATE_KEY]["calls"]
               for s in run.states[-3:-1] if REST_STATE_KEY in s)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_after_a_stop_at_any_moment_the_day_s_count_holds_every_accepted_call(
        box: Sandbox, tmp_path: Path, stop: signal.Signals) -> None:
    settings = config(box, "2024-02-16T00:00:00Z", rest_increments="always")
    box.set_faults(routes=["activities"], stall_seconds=0.05, stall_rate=1.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")}
    for number, pause in enumerate((0.0, 0.13, 0.37)):
        command = tap_command(tmp_path / f"{number}", settings)
        lines: list[str] = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=env) as tap:
            assert tap.stdout is not None
            states, stopped = 0, False
            for line in tap.stdout:
                lines.append(line)
                states += json.loads(line)["type"] == "STATE"
                if states == 3 + number:
                    time.sleep(pause)  # mid-call, or between two
                    tap.send_signal(stop)
                    stopped = True
                    lines += tap.stdout.readlines()  # what a SIGTERMed run writes last
                    break
        assert stopped and tap.returncode != 0, "stopped in the middle of the read"
        time.sleep(0.3)  # calls already sent reach the sandbox
        whole = "".join(line for line in lines if line.endswith("\n"))  # a kill cuts one
        saved = [m["value"] for m in parse_output(whole) if m["type"] == "STATE"]
        assert saved[-1][REST_STATE_KEY]["calls"] >= rest_calls(box)
