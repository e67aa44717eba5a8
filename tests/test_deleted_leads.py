"""Get Deleted Leads trusts no answer either (issue 23): a malformed page, still malformed
after its retries, stops that stream alone with one line, its bookmark where it was, and the
next run delivers the rest, nothing twice (the lookback's memory holds what the stopped read
delivered); a well-formed surprise (a deletion dated in the future, repeated, out of order,
with an offset or its type as text) still gives every deletion once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TapRun, config_for, run_tap

from tap_marketo_activities.sandbox import Sandbox
from tap_marketo_activities.sandbox.odd import MALFORMED

START, END = "2024-02-10T00:00:00Z", "2024-02-13T00:00:00Z"  # 1,080 deletions: 4 pages
DELETED, VISITS = "activities_delete_lead", "activities_visit_webpage"
SURPRISES = ["type_text", "date_plus_0100", "date_minus_0500", "future_last", "repeat_top",
             "shuffled"]


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(job_latency=0.1, data_start="2024-02-01T00:00:00Z",
                 data_end="2024-02-20T00:00:00Z", activities_per_day=2880) as sandbox:
        yield sandbox


def run(box: Sandbox, tmp: Path, state: dict | None = None) -> TapRun:
    config = config_for(box, start_date=START, end_date=END, activity_type_ids=[1, 37],
                        rest_increments="off", lookback_hours=4)
    return run_tap(tmp, config, state)


def deletions(box: Sandbox) -> set[str]:
    return {d["marketoGUID"] for d in box.expected_deleted_leads(START)
            if d["activityDate"] < END}


def delivered(*runs: TapRun) -> Counter[str]:
    """Deletions delivered up to each run's last STATE (what a target commits)."""
    guids: Counter[str] = Counter()
    for one in runs:
        last = max(i for i, m in enumerate(one.messages) if m["type"] == "STATE")
        guids.update(m["record"]["marketoGUID"] for m in one.messages[:last]
                     if m["type"] == "RECORD" and m["stream"] == DELETED)
    return guids


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_page_stops_that_stream_alone_and_the_next_run_delivers_the_rest(
        box: Sandbox, tmp_path: Path, kind: str) -> None:
    box.set_rest_odd(kind, times=-1, after=1, route="deleted_leads")
    first = run(box, tmp_path / "1")
    assert first.returncode == 1
    errors = [line for line in first.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and "Get Deleted Leads answered oddly" in errors[0], errors
    assert "Traceback" not in first.stderr
    marks: dict[str, Any] = first.last_state["bookmarks"]
    assert marks.get(DELETED, {}).get("replication_key_value") in (None, START)
    assert marks[VISITS]["replication_key_value"] == END, "the other stream went on"
    box.set_rest_odd(kind, times=0, route="deleted_leads")
    second = run(box, tmp_path / "2", first.last_state)
    assert second.returncode == 0, second.stderr[-3000:]
    both = delivered(first, second)
    assert set(both) == deletions(box)
    assert max(both.values()) == 1, "nothing twice"


@pytest.mark.parametrize("kind", SURPRISES)
def test_a_well_formed_surprise_still_gives_every_deletion_once(
        box: Sandbox, tmp_path: Path, kind: str) -> None:
    box.set_rest_odd(kind, times=1, after=1, route="deleted_leads")
    done = run(box, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    guids = delivered(done)
    future = {g for g in guids if len(g) > 9}  # future_last's: dated 2099, delivered once
    assert set(guids) - future == deletions(box)
    assert max(guids.values()) == 1
