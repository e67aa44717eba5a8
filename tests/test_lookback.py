"""The lookback (issue 24) through the sandbox with late arrivals: chains of runs a minute
to hours apart deliver every activity whose lateness is within lookback_hours, none twice,
under both readings of each undocumented fact (the bulk filter by activityDate or by commit
time; Get Lead Activities in activityDate or commit order), through REST and bulk, with
SIGKILLs in the chain; lookback_hours 0 and a state from before the lookback re-read nothing."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import config_for, run_tap, tap_command

from tap_marketo_activities.sandbox import Sandbox
from tap_marketo_activities.sandbox.data import to_time
from tap_marketo_activities.sandbox.late import DELAYS, MAX_DELAY

DATA_START, DATA_END = "2024-02-01T00:00:00Z", "2024-02-04T00:00:00Z"
START = "2024-02-02T00:00:00Z"  # start_date of the chains
FIRST = dt.datetime(2024, 2, 2, 6, tzinfo=dt.timezone.utc)  # the first run's clock
# Minutes after the run before: a minute apart, then a paused schedule, then a minute apart.
STEPS = [0, 1, 1, 1, 120, 1, 300, 1, 480, 1]
LOOKBACK = MAX_DELAY // 3600 + 1  # hours: every late arrival of the sandbox is within it
# Records of Get Deleted Leads, and one per lead merged away: not activities of the log
NOT_ACTIVITIES = ("merged_leads", "activities_delete_lead")


def clocks() -> list[str]:
    moments, now = [], FIRST
    for minutes in STEPS:
        now += dt.timedelta(minutes=minutes)
        moments.append(now.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return moments


def make(bulk_by: str, rest_order: str) -> Sandbox:
    return Sandbox(job_latency=0.05, data_start=DATA_START, data_end=DATA_END,
                   activities_per_day=1440, late=True, bulk_by=bulk_by,
                   rest_order=rest_order, rate_limit_calls=1000)


def settings(box: Sandbox, clock: str, **overrides: Any) -> dict[str, Any]:
    return config_for(box, start_date=START, end_date=clock,
                      **{"lookback_hours": LOOKBACK, **overrides})


def committed(messages: list[dict]) -> tuple[list[str], dict | None]:
    """What a run delivered up to its last STATE (what a target commits), and that STATE."""
    states = [i for i, m in enumerate(messages) if m["type"] == "STATE"]
    if not states:
        return [], None
    last = states[-1]
    guids = [m["record"]["marketoGUID"] for m in messages[:last]
             if m["type"] == "RECORD" and m["stream"] not in NOT_ACTIVITIES]
    return guids, messages[last]["value"]


def run_killed(tmp: Path, config: dict, state: dict | None, after_states: int) -> list[dict]:
    """A run SIGKILLed right after its `after_states`-th STATE whose bookmarks moved, or at
    its end if it writes fewer; its messages up to then."""
    messages: list[dict] = []
    moved = 0
    with subprocess.Popen(tap_command(tmp, config, state), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as tap:
        assert tap.stdout is not None
        for line in tap.stdout:
            message = json.loads(line)
            messages.append(message)
            if message["type"] == "STATE" and state is not None and \
                    message["value"].get("bookmarks") != state.get("bookmarks"):
                moved += 1
                if moved >= after_states:
                    tap.send_signal(signal.SIGKILL)
                    break
    return messages


def chain(box: Sandbox, tmp: Path, kills: dict[int, int], **overrides: Any
          ) -> tuple[Counter[str], str, list[str]]:
    """The runs of STEPS, each at its clock; (activities delivered up to each run's last
    STATE, the last clock, every run's log)."""
    state: dict | None = None
    delivered: Counter[str] = Counter()
    logs = []
    for number, clock in enumerate(clocks()):
        box.set_clock(clock)
        config = settings(box, clock, **overrides)
        if number in kills and state is not None:
            messages = run_killed(tmp / f"{number}k", config, state, kills[number])
            guids, killed_state = committed(messages)
            delivered.update(guids)
            state = killed_state or state
        run = run_tap(tmp / str(number), config, state)
        assert run.returncode == 0, run.stderr[-3000:]
        logs.append(run.stderr)
        guids, state = committed(run.messages)
        delivered.update(guids)
    return delivered, clocks()[-1], logs


def lateness(box: Sandbox, activity: dict) -> float:
    committed_at = box.committed_at(activity["marketoGUID"])
    assert committed_at is not None
    return (to_time(committed_at) - to_time(activity["activityDate"])).total_seconds()


def expected(box: Sandbox, clock: str, hours: int) -> set[str]:
    """What must be delivered: committed before the last clock, dated from start_date,
    late by no more than the lookback."""
    visible = [a for a in box.visible_at(clock) if a["activityDate"] >= START]
    return {a["marketoGUID"] for a in visible if lateness(box, a) <= hours * 3600}


def assert_real(box: Sandbox, delivered: Counter[str], clock: str) -> None:
    """Every delivered activity exists and was committed before the last run's clock."""
    for guid in delivered:
        committed_at = box.committed_at(guid)
        assert committed_at is not None and committed_at < clock, guid


@pytest.fixture(params=[("date", "date"), ("date", "commit"), ("commit", "date"),
                        ("commit", "commit")], ids=lambda p: f"bulk_by_{p[0]}-rest_{p[1]}")
def late_box(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    with make(*request.param) as box:
        yield box


@pytest.mark.parametrize("rest_increments", ["auto", "off"])
def test_a_chain_delivers_every_late_activity_within_the_lookback_once(
        late_box: Sandbox, tmp_path: Path, rest_increments: str) -> None:
    """Runs a minute apart, then hours apart, with SIGKILLs in two of them: every activity
    late by up to lookback_hours arrives, none twice, under each of the four readings."""
    delivered, last, logs = chain(late_box, tmp_path, kills={2: 1, 6: 1},
                                  rest_increments=rest_increments)
    must = expected(late_box, last, LOOKBACK)
    assert not [g for g, n in delivered.items() if n > 1], "nothing twice"
    assert must <= set(delivered), f"{len(must - set(delivered))} lost"
    assert_real(late_box, delivered, last)
    late = {g for g in must if g in delivered}
    kinds = {a["activityTypeId"] for a in late_box.visible_at(last)
             if a["marketoGUID"] in late and lateness(late_box, a) > 60}
    assert kinds >= set(DELAYS), "the chain met late Send Email, visits and custom ones"
    found = [line for log in logs for line in log.splitlines() if "Late activities:" in line]
    assert len(found) == len(logs)
    assert any("none" not in line for line in found)


def test_lookback_0_reads_nothing_again_and_misses_what_comes_late(tmp_path: Path) -> None:
    """The old behaviour: each run reads from its bookmark only: none twice, and the
    activities committed after their second was read are not delivered."""
    with make("date", "date") as box:
        delivered, last, logs = chain(box, tmp_path, kills={}, lookback_hours=0)
        missed = expected(box, last, LOOKBACK) - set(delivered)
        assert_real(box, delivered, last)
    assert not [g for g, n in delivered.items() if n > 1]
    assert missed, "late activities come after their second was read"
    assert not any("Lookback:" in line or "Late activities:" in line
                   for log in logs for line in log.splitlines())


def test_a_state_from_before_the_lookback_sends_nothing_again(tmp_path: Path) -> None:
    """A state with bookmarks but no `settled` and no memory (an older version's): the
    first run with the lookback re-reads nothing before the bookmarks; the next one does."""
    with make("date", "date") as box:
        first, second, third = clocks()[0], clocks()[4], clocks()[6]
        box.set_clock(first)
        old = run_tap(tmp_path / "0", settings(box, first, lookback_hours=0))
        state = old.last_state
        for mark in state["bookmarks"].values():
            mark.pop("settled", None)  # as an older version wrote it
        state.pop("marketo_delivered")
        box.set_clock(second)
        run = run_tap(tmp_path / "1", settings(box, second), state)
        assert run.returncode == 0, run.stderr[-3000:]
        assert not set(old.guids()) & set(run.guids()), "nothing sent again"
        marks = {name: mark["replication_key_value"]
                 for name, mark in state["bookmarks"].items()}
        for name, records in run.records.items():
            assert all(r["activityDate"] >= marks[name] for r in records), name
        assert "Lookback:" not in run.stderr
        box.set_clock(third)
        after = run_tap(tmp_path / "2", settings(box, third), run.last_state)
        assert "Lookback:" in after.stderr
        assert not set(after.guids()) & (set(old.guids()) | set(run.guids()))


def test_the_lookback_line_says_what_the_reread_costs(tmp_path: Path) -> None:
    """Through REST it names the calls; through bulk the MB of the first window."""
    with make("date", "date") as box:
        box.set_clock(clocks()[0])
        first = run_tap(tmp_path / "0", settings(box, clocks()[0], rest_increments="off"))
        state = first.last_state  # the export's sizes learnt
        for number, (mode, words) in enumerate([("auto", "Get Lead Activities"),
                                                 ("off", "MB")], start=1):
            box.set_clock(clocks()[number])
            run = run_tap(tmp_path / str(number), settings(box, clocks()[number],
                                                           rest_increments=mode), state)
            line = next(line for line in run.stderr.splitlines() if "Lookback:" in line)
            assert f"lookback_hours={LOOKBACK}" in line and words in line, line
