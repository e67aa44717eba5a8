"""What the person reading the log sees: a heartbeat through long jobs, one planning line,
an exact summary, words that agree with their numbers."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from conftest import END, MERGED, START, config_for, delivered_merges, run_tap

from tap_marketo_activities.sandbox import Sandbox

MID = "2024-02-01T00:00:00Z"

HEARTBEAT = re.compile(r"Waiting on Marketo: job (\d+) of (\d+) \(window \S+ \.\. \S+ "
                       r"\(\d+ types?\)\) (Created|Queued|Processing|downloading)")


def test_a_heartbeat_says_what_each_job_is_doing_while_marketo_works(tmp_path: Path) -> None:
    with Sandbox(job_latency=3.0, data_start=START, data_end=END) as box:
        config = config_for(box, window_days=30, heartbeat_seconds=1, max_jobs_in_queue=2)
        run = run_tap(tmp_path, config)
        assert run.returncode == 0, run.stderr[-3000:]
        beats = [line for line in run.stderr.splitlines() if "Waiting on Marketo" in line]
        assert beats, run.stderr[-3000:]
        for line in beats:
            match = HEARTBEAT.search(line)
            assert match, line
            number, total = int(match[1]), int(match[2])
            assert 1 <= number <= total == len(box.stats()["jobs"])
            assert " INFO " in line
        # Once a job has finished, the line estimates the time left.
        assert any("on average: about" in line and "left." in line for line in beats)


def test_the_summary_counts_every_stream_and_the_plan_is_one_line(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    run = run_tap(tmp_path, config_for(fresh_sandbox))
    assert run.returncode == 0, run.stderr[-3000:]
    summary = run.stderr[run.stderr.index("Sync summary:"):]
    counted = {m[1]: int(m[2]) for m in re.finditer(
        rf"^(activities_\w+|{MERGED})\s+(\d+)\s+\d+\s+\d+$", summary, re.MULTILINE)}
    written = Counter(m["stream"] for m in run.messages if m["type"] == "RECORD")
    assert written["activities_delete_lead"] > 0
    assert written[MERGED] == len(delivered_merges(fresh_sandbox, START, END)) > 0
    assert counted == {stream: written.get(stream, 0) for stream in counted}
    assert set(written) <= set(counted)
    assert len([line for line in run.stderr.splitlines() if "Planned " in line]) == 1
    assert "windows from" not in run.stderr  # no planning line per stream any more
    assert re.search(r"\b1 (records|windows|jobs|streams)\b", run.stderr) is None
    mb = re.findall(r"(\d+(?:\.\d+)?) (MiB|MB)\b", run.stderr)
    assert mb and {unit for _, unit in mb} == {"MB"}
    # One run delivers it all: no plan for further runs (and no finishing date).
    assert "Backfill plan:" not in run.stderr


def test_an_unknown_data_type_is_one_info_line_per_run(sandbox: Sandbox, tmp_path: Path
                                                       ) -> None:
    run = run_tap(tmp_path, config_for(sandbox), extra=("--discover",))
    assert run.returncode == 0
    lines = [line for line in run.stderr.splitlines() if "is not one the tap types" in line]
    types = {re.findall(r"dataType '(\w+)'", line)[0] for line in lines}
    assert len(lines) == len(types) >= 1
    assert all(" INFO " in line for line in lines)


def test_the_log_says_where_each_stream_resumes_and_nothing_else_does(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    config = config_for(fresh_sandbox, activity_type_ids=[1, 2, 37], end_date=MID)
    first = run_tap(tmp_path / "1", config)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Resuming 3 streams at 2024-01-01T00:00:00Z (start_date: no bookmark yet)" \
        in first.stderr
    second = run_tap(tmp_path / "2", {**config, "end_date": END}, state=first.last_state)
    assert second.returncode == 0, second.stderr[-3000:]
    resumes = [line for line in second.stderr.splitlines() if "| Resuming" in line]
    assert len(resumes) == 1 and f"3 streams at {MID} (its bookmark)" in resumes[0]
    assert "Starting incremental sync" not in first.stderr + second.stderr
