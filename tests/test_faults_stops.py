"""Stops and dirty data: signals, crashes and re-attaching, dirty files, and every fault
at once."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from conftest import (
    END,
    RUNNING,
    START,
    TapRun,
    all_guids,
    assert_complete,
    assert_no_secrets,
    config_for,
    finish_after,
    parse_output,
    run_tap,
    tap_command,
)

from tap_marketo_activities.sandbox import Sandbox


def test_dirty_files_keep_every_row_and_report_each_problem(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(dirty_rows=True)
        run = run_tap(tmp_path, config_for(box, window_days=31))
        assert_complete(run, box)
        dirty = box.dirty_guids()
        assert len(set(dirty.values())) >= 5
        assert set(dirty) <= set(run.guids())
        assert re.search(r"row \d+: stray CR", run.stderr)
        assert re.search(r"row \d+: invalid UTF-8", run.stderr)
        assert re.search(r"row \d+: attributes is not valid JSON", run.stderr)
        assert re.search(r"row \d+: cells do not match the header: padded or cut to fit "
                         r"\(\d+ where the header has", run.stderr)


def start_tap(tmp: Path, config: dict[str, Any], state: dict | None = None
              ) -> subprocess.Popen[str]:
    return subprocess.Popen(tap_command(tmp, config, state), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_until_jobs_in_flight(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if '"marketo_exports"' in line:
            break
    return lines


def test_sigterm_cancels_our_jobs_and_saves_state(tmp_path: Path) -> None:
    with Sandbox(job_latency=2.0, data_start=START, data_end=END) as box:
        config = config_for(box, window_days=5, max_retry_seconds=300)
        process = start_tap(tmp_path / "1", config)
        lines = read_until_jobs_in_flight(process)
        assert any(j["status"] in RUNNING for j in box.stats()["jobs"])
        # Marketo failing as the signal comes: the stop must not wait out retries.
        box.set_faults(http_5xx_rate=0.5)
        process.send_signal(signal.SIGTERM)
        # No timing asserted: the bound only catches a stop that waits out the retry
        # budget (300 s) or hangs.
        rest, stderr = process.communicate(timeout=30)
        assert process.returncode != 0
        assert "SIGTERM" in stderr and "Traceback" not in stderr
        stopped = TapRun(process.returncode, parse_output("".join(lines) + rest), stderr)
        box.clear_faults()
        # A cancel refused by the 5xx leaves its job in the state for the next run.
        kept = {e["exportId"] for e in stopped.last_state.get("marketo_exports", [])}
        running = {j["exportId"] for j in box.stats()["jobs"] if j["status"] in RUNNING}
        assert running <= kept
        finish_after(stopped, box, tmp_path, window_days=5)


def test_a_run_after_a_crash_reattaches_to_its_jobs(tmp_path: Path) -> None:
    with Sandbox(job_latency=1.5, data_start=START, data_end=END) as box:
        config = config_for(box, window_days=10)
        process = start_tap(tmp_path / "1", config)
        lines = read_until_jobs_in_flight(process)
        process.kill()
        process.communicate(timeout=30)
        crashed = TapRun(-9, parse_output("".join(lines)), "")
        kept = {e["exportId"] for e in crashed.last_state["marketo_exports"]}
        created_before = len(box.stats()["jobs"])
        resumed = run_tap(tmp_path / "2", config, state=crashed.last_state)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "re-attaching" in resumed.stderr
        new_jobs = box.stats()["jobs"][created_before:]
        windows_new = {(j["startAt"], j["endAt"]) for j in new_jobs}
        windows_kept = {(j["startAt"], j["endAt"]) for j in box.stats()["jobs"]
                        if j["exportId"] in kept}
        assert not windows_new & windows_kept
        assert set(crashed.guids() + resumed.guids()) == all_guids(box)


def test_everything_at_once_at_moderate_rates(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.3, data_start=START, data_end=END, token_ttl=4) as box:
        box.set_faults(
            error_rate={"604": 0.03, "608": 0.02, "611": 0.02, "713": 0.02, "615": 0.03,
                        "601": 0.02, "602": 0.02},
            http_5xx_rate=0.03, reset_rate=0.03, fail_jobs=1, queue_full_times=1,
            already_queued_times=1, foreign_jobs=5, file_404_times=1,
            break_download_rate=0.2, corrupt_download_times=1, dirty_rows=True,
        )
        # A retry budget as long as in production: at these rates a call sometimes fails
        # six times in a row, and the test is about finishing, not about giving up.
        run = run_tap(tmp_path, config_for(box, window_days=10, request_timeout_seconds=2,
                                           max_retry_seconds=300))
        assert_complete(run, box)
        assert_no_secrets(run, box)
        assert box.stats()["max_queued_or_processing"] <= 10
