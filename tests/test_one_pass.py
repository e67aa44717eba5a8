"""One pass per export file for every stream: interleaved records, one STATE per window,
no spool, bounded temp disk, and a crash at any moment that costs no export job or quota.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    END,
    START,
    TapRun,
    all_guids,
    assert_complete,
    assert_nothing_left_running,
    config_for,
    delivered_rows,
    parse_output,
    run_tap,
    tap_command,
)

from tap_marketo_activities.sandbox import Sandbox
from tap_marketo_activities.workdir import PREFIX

BULK_TYPES = [1, 2, 6, 7, 10, 12]


def bulk_streams(run: TapRun) -> set[str]:
    return {m["stream"] for m in run.messages if m["type"] == "SCHEMA"} - \
        {"activities_delete_lead"}


def window_states(run: TapRun) -> list[dict[str, Any]]:
    """The STATE messages that moved a bookmark, in order."""
    moved, last = [], None
    for state in run.states:
        marks = {s: b.get("replication_key_value")
                 for s, b in state.get("bookmarks", {}).items()}
        if marks != last:
            moved.append(marks)
            last = marks
    return moved


def test_records_of_every_type_interleave_and_one_state_moves_every_bookmark(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    run = run_tap(tmp_path, config_for(fresh_sandbox, activity_type_ids=BULK_TYPES))
    assert_complete_bulk(run, fresh_sandbox)
    streams = bulk_streams(run)
    assert len(streams) == len(BULK_TYPES)
    # Each stream's SCHEMA before its first RECORD.
    first_record: dict[str, int] = {}
    for index, message in enumerate(run.messages):
        if message["type"] == "RECORD":
            first_record.setdefault(message["stream"], index)
    schema_at = {m["stream"]: i for i, m in enumerate(run.messages) if m["type"] == "SCHEMA"}
    assert all(schema_at[s] < first_record[s] for s in first_record)
    # Records of different streams interleave as the shared file is read: far more
    # switches between streams than one block per stream per window.
    order = [m["stream"] for m in run.messages if m["type"] == "RECORD"]
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    jobs = len(fresh_sandbox.stats()["jobs"])
    assert switches > 10 * len(streams) * jobs
    # Every bookmark of a window moves in the same STATE, to the window's end.
    moves = [m for m in window_states(run) if any(m.values())]
    assert moves, run.stderr[-2000:]
    for marks in moves:
        assert len({marks[s] for s in streams}) == 1, marks
    assert moves[-1][next(iter(streams))] == END
    # Nothing spooled: the run never wrote a file of its own beside the export files.
    assert "spool" not in run.stderr.lower()


def assert_complete_bulk(run: TapRun, box: Sandbox) -> None:
    assert run.returncode == 0, run.stderr[-3000:]
    expected = {a["marketoGUID"] for a in delivered_rows(box, START, END, BULK_TYPES)}
    assert set(run.guids()) == expected
    assert [g for g, n in run.guids().items() if n > 1] == []


def run_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob(f"{PREFIX}*"))


def kill_at(moment: str, process: subprocess.Popen[str], tmpdir: Path) -> list[str]:
    """Read the tap's stdout until `moment`, then SIGKILL it. The lines read."""
    assert process.stdout is not None
    lines: list[str] = []
    if moment == "mid_download":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            partial = [p for folder in run_folders(tmpdir) for p in folder.glob("*.csv")
                       if p.stat().st_size > 0]
            if partial:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("no download in flight within 60 s")
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=30)
        return out.splitlines(keepends=True)
    windows = 0
    for line in process.stdout:
        lines.append(line)
        message = json.loads(line)
        if moment == "first_record" and message["type"] == "RECORD":
            break
        if message["type"] == "STATE" and any(
                b.get("replication_key_value") for b in message["value"]["bookmarks"].values()):
            windows += 1
            if moment == "after_2_windows" and windows == 2:
                break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return lines


@pytest.mark.parametrize("moment", ["first_record", "after_2_windows", "mid_download"])
def test_a_sigkill_at_any_moment_costs_no_export_and_loses_nothing(
        moment: str, tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    with Sandbox(job_latency=0.5, data_start=START, data_end=END) as box:
        config = config_for(box, activity_type_ids=BULK_TYPES, window_days=7,
                            max_jobs_in_queue=3, request_timeout_seconds=60)
        if moment == "mid_download":
            box.set_faults(stall_download_rate=1.0, stall_seconds=20)
        process = subprocess.Popen(tap_command(tmp_path / "1", config), stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True, env=env)
        lines = kill_at(moment, process, tmpdir)
        whole = [line for line in lines if line.endswith("\n")]  # SIGKILL may cut the last
        killed = TapRun(-9, parse_output("".join(whole)), "")
        assert run_folders(tmpdir), "the killed run left its temp folder"
        box.clear_faults()
        state = killed.last_state if killed.states else None
        resumed = run_tap(tmp_path / "2", config, state=state, env={"TMPDIR": str(tmpdir)})
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        # Nothing lost; repeats only where the killed run had written records of a
        # window it had not finished.
        expected = {a["marketoGUID"] for a in delivered_rows(box, START, END, BULK_TYPES)}
        assert set(killed.guids() + resumed.guids()) == expected
        assert [g for g, n in resumed.guids().items() if n > 1] == []
        # No window exported twice: each window's job completed once, across both runs.
        completed = Counter((j["startAt"], j["endAt"]) for j in box.stats()["jobs"]
                            if j["status"] == "Completed")
        assert [w for w, n in completed.items() if n > 1] == []
        assert box.stats()["export_bytes_today"] == sum(
            j["fileSize"] for j in box.stats()["jobs"] if j["status"] == "Completed")
        # The killed run's temp folder is gone, and so is the resumed run's.
        assert run_folders(tmpdir) == []


def test_a_job_of_an_earlier_run_that_asked_for_more_types_is_re_used(tmp_path: Path) -> None:
    with Sandbox(job_latency=1.5, data_start=START, data_end=END) as box:
        wide = config_for(box, activity_type_ids=BULK_TYPES, window_days=30)
        process = subprocess.Popen(tap_command(tmp_path / "1", wide), stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # the probe's window delivered, the next job created
            lines.append(line)
            if '"marketo_exports"' in line and '"replication_key_value"' in line:
                break
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        killed = TapRun(-9, parse_output("".join(lines)), "")
        kept = killed.last_state["marketo_exports"]
        assert kept and all(len(e["activityTypeIds"]) == len(BULK_TYPES) for e in kept)
        jobs_before = len(box.stats()["jobs"])
        narrow = {**wide, "activity_type_ids": BULK_TYPES[:2]}
        resumed = run_tap(tmp_path / "2", narrow, state=killed.last_state)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        reused = {e["exportId"] for e in kept}
        new_windows = {(j["startAt"], j["endAt"]) for j in box.stats()["jobs"][jobs_before:]}
        kept_windows = {(e["startAt"], e["endAt"]) for e in kept}
        assert not new_windows & kept_windows  # the superset job served the narrower run
        assert "re-attaching" in resumed.stderr
        assert set(resumed.records) == {"activities_visit_webpage", "activities_fill_out_form"}
        narrow_truth = {a["marketoGUID"] for a in delivered_rows(box, START, END, BULK_TYPES[:2])}
        assert set(killed.guids()) | set(resumed.guids()) >= narrow_truth
        assert reused


def test_temp_disk_holds_at_most_max_jobs_in_queue_files(tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            files = [p for folder in run_folders(tmpdir) for p in folder.glob("*.csv")]
            peak[0] = max(peak[0], len(files))

    with Sandbox(job_latency=0.05, data_start=START, data_end=END) as box:
        config = config_for(box, window_days=2, max_jobs_in_queue=2)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            run = run_tap(tmp_path, config, env={"TMPDIR": str(tmpdir)})
        finally:
            done.set()
            sampler.join()
        assert_complete(run, box)
        assert len(box.stats()["jobs"]) > 20
        assert 1 <= peak[0] <= 2


def test_dash_dash_test_has_no_error_line_and_leaves_history_to_the_next_run(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    config = config_for(fresh_sandbox)
    run = run_tap(tmp_path, config, extra=("--test",))
    assert run.returncode == 0, run.stderr[-3000:]
    assert [line for line in run.stderr.splitlines() if "| ERROR" in line] == []
    assert all(not b.get("replication_key_value")
               for state in run.states for b in state.get("bookmarks", {}).values())
    assert set(Counter(m["stream"] for m in run.messages if m["type"] == "RECORD").values()) \
        == {1}
    full = run_tap(tmp_path / "full", config, state=run.last_state if run.states else None)
    assert full.returncode == 0
    assert set(full.guids()) == all_guids(fresh_sandbox)


def test_a_file_refused_after_reading_is_not_re_used_by_the_next_run(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(miscount_jobs=1)  # Marketo counts one record more than the file holds
        config = config_for(box, activity_type_ids=BULK_TYPES[:2])
        first = run_tap(tmp_path / "1", config)
        assert first.returncode == 1
        errors = [line for line in first.stderr.splitlines() if "| ERROR" in line]
        assert len(errors) == 1 and "not whole" in errors[0], first.stderr[-2000:]
        refused = box.stats()["jobs"][0]["exportId"]
        kept = first.last_state.get("marketo_exports", [])
        assert refused not in {e["exportId"] for e in kept}
        second = run_tap(tmp_path / "2", config, state=first.last_state)
        assert second.returncode == 0, second.stderr[-2000:]
        truth = {a["marketoGUID"] for a in delivered_rows(box, START, END, BULK_TYPES[:2])}
        assert set(first.guids() + second.guids()) == truth


def test_types_that_exported_nothing_and_no_room_end_the_run_instead_of_hanging(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    state = {"marketo_export_sizes": {"1": [0, 86400]}}
    config = config_for(fresh_sandbox, activity_type_ids=[1], max_export_mb_per_day=0.0011,
                        rest_increments="off")
    run = run_tap(tmp_path, config, state=state, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and "resets at" in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def test_a_target_that_stops_reading_ends_the_run_without_exporting_on(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    config = config_for(fresh_sandbox, activity_type_ids=[1], window_days=1)
    command = " ".join(f"'{part}'" for part in tap_command(tmp_path, config))
    done = subprocess.run(f"{command} 2> {tmp_path / 'err.log'} | head -n 30 > /dev/null",
                          shell=True, timeout=180, executable="/bin/bash",
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("TAP_MARKETO")})
    assert done.returncode == 0  # head's
    stderr = (tmp_path / "err.log").read_text()
    errors = [line for line in stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1 and "target stopped reading" in errors[0], stderr[-2000:]
    assert len(fresh_sandbox.stats()["jobs"]) < 20  # of 60 one-day windows
    assert_nothing_left_running(fresh_sandbox)


def test_a_failing_stream_map_is_one_line_that_names_the_stream(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    maps = {"activities_visit_webpage": {"boom": "int(record['activityDate'][:4]) // 0"}}
    run = run_tap(tmp_path, config_for(fresh_sandbox, activity_type_ids=[1, 2],
                                       stream_maps=maps))
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1, run.stderr[-2000:]
    assert "activities_visit_webpage: the stream map failed" in errors[0]
    assert "bug of the tap" not in run.stderr and "Traceback" not in run.stderr
    assert not any(state.get("bookmarks", {}).get("activities_visit_webpage", {})
                   .get("replication_key_value") for state in run.states)
    assert_nothing_left_running(fresh_sandbox)
