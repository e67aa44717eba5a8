"""Marketo's limits and failures, one sandbox fault at a time and all at once: every sync
either delivers everything or stops cleanly with a state the next run finishes from."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    END,
    START,
    TapRun,
    all_guids,
    config_for,
    parse_output,
    run_tap,
    tap_command,
)

from tap_marketo_activities.sandbox import Sandbox

TOKEN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:ab")
RUNNING = ("Created", "Queued", "Processing")


def assert_nothing_left_running(box: Sandbox) -> None:
    assert [j["exportId"] for j in box.stats()["jobs"] if j["status"] in RUNNING] == []


def assert_complete(run: TapRun, box: Sandbox) -> None:
    assert run.returncode == 0, run.stderr[-3000:]
    assert set(run.guids()) == all_guids(box)
    assert [g for g, n in run.guids().items() if n > 1] == []
    assert_nothing_left_running(box)


def assert_no_secrets(run: TapRun, box: Sandbox) -> None:
    secret = box.config["client_secret"]
    text = run.stderr + "\n".join(map(str, run.messages))
    assert secret not in text
    assert not TOKEN.search(text)


def assert_clean_stop(run: TapRun, box: Sandbox, words: str) -> None:
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if "| ERROR" in line]
    assert any(words in line for line in errors), run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert_nothing_left_running(box)


def finish_after(first: TapRun, box: Sandbox, tmp_path: Path, **config: Any) -> None:
    """The run after a clean stop delivers the rest: nothing lost."""
    box.clear_faults()
    second = run_tap(tmp_path / "after", config_for(box, **config), state=first.last_state)
    assert second.returncode == 0, second.stderr[-3000:]
    assert set(first.guids() + second.guids()) == all_guids(box)


# (faults, tap settings, what the log shows, what the sandbox's jobs show)
RECOVERABLE = {
    "stalled calls time out and are retried": (
        {"stall_seconds": 5, "stall_rate": 0.1}, {"request_timeout_seconds": 1},
        "Retrying", None),
    "broken and stalled downloads resume with Range": (
        {"break_download_rate": 0.4, "stall_download_rate": 0.2, "stall_seconds": 4},
        {"request_timeout_seconds": 1}, "resuming", None),
    "a corrupt file is downloaded again, never half-emitted": (
        {"corrupt_download_times": 1}, {}, "does not match", None),
    "a file not ready right after Completed is waited for": (
        {"file_404_times": 2}, {}, "", None),
    "failed jobs are created again": (
        {"fail_jobs": 2}, {}, "Export failed due to internal error", ("Failed", 2)),
    "a stuck job is cancelled and created again": (
        {"stuck_jobs": 1}, {"job_timeout_seconds": 2}, "still Queued", ("Cancelled", 1)),
}


@pytest.mark.parametrize("case", RECOVERABLE)
def test_a_sync_through_a_fault_delivers_everything(tmp_path: Path, case: str) -> None:
    faults, settings, logged, jobs = RECOVERABLE[case]
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(**faults)
        run = run_tap(tmp_path, config_for(box, **settings))
        assert_complete(run, box)
        assert logged in run.stderr
        if jobs:
            status, count = jobs
            assert sum(j["status"] == status for j in box.stats()["jobs"]) == count


def test_transient_errors_resets_and_5xx_are_retried(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(error_rate={"604": 0.05, "608": 0.05, "611": 0.05, "713": 0.05,
                                   "615": 0.05}, http_5xx_rate=0.05, reset_rate=0.05)
        run = run_tap(tmp_path, config_for(box, max_retry_seconds=300))
        assert_complete(run, box)
        assert sum(box.stats()["injected"].values()) >= 3
        assert "Retrying" in run.stderr
        assert_no_secrets(run, box)


def test_secrets_stay_out_of_a_debug_log(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.1, data_start=START, data_end=END) as box:
        box.set_faults(error_rate={"601": 0.1})
        run = run_tap(tmp_path, config_for(box, activity_type_ids=[1]),
                      env={"LOGLEVEL": "DEBUG"})
        assert run.returncode == 0, run.stderr[-2000:]
        assert "DEBUG" in run.stderr
        assert_no_secrets(run, box)


def test_tokens_are_refreshed_on_expiry_and_on_601_602(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.5, data_start=START, data_end=END, token_ttl=3) as box:
        box.set_faults(error_rate={"601": 0.05, "602": 0.05})
        run = run_tap(tmp_path, config_for(box, window_days=10))
        assert_complete(run, box)
        assert box.stats()["token_calls"] >= 2
        assert_no_secrets(run, box)


def test_606_waits_for_the_window_and_the_tap_paces_itself(tmp_path: Path) -> None:
    # Another tool took part of the window: Marketo answers 606 and the tap waits it out.
    with Sandbox(job_latency=0.1, data_start=START, data_end=END, rate_limit_calls=12,
                 rate_limit_window=20) as box:
        run = run_tap(tmp_path, config_for(box, window_days=10))
        assert_complete(run, box)
        assert box.stats()["refused"].get("606", 0) >= 1
        assert "606" in run.stderr


def test_the_tap_stays_under_its_share_of_the_limits(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.1, data_start=START, data_end=END, rate_limit_calls=30,
                 concurrency_limit=3) as box:
        run = run_tap(tmp_path, config_for(box, window_days=7, api_limit_share=0.3))
        assert_complete(run, box)
        stats = box.stats()
        assert sum(stats["calls"].values()) > 30  # enough calls to need the pacing
        assert stats["refused"] == {}
        assert stats["max_in_flight"] <= 3


def test_daily_call_quota_607_stops_cleanly_and_the_next_run_finishes(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(quota_607_after=20)
        first = run_tap(tmp_path, config_for(box, window_days=7, max_jobs_in_queue=1))
        # Marketo refuses even the cancel now: the job left in its queue is kept in the
        # state, and the next run re-attaches to it instead of exporting the window again.
        running = {j["exportId"] for j in box.stats()["jobs"] if j["status"] in RUNNING}
        kept = {e["exportId"] for e in first.last_state.get("marketo_exports", [])}
        assert running <= kept
        assert first.returncode == 1 and "midnight US Central" in first.stderr
        assert "Traceback" not in first.stderr
        finish_after(first, box, tmp_path, window_days=7)


def test_full_queue_and_already_queued_and_foreign_jobs(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(queue_full_times=2, already_queued_times=2, foreign_jobs=7)
        run = run_tap(tmp_path, config_for(box, window_days=10, poll_interval_seconds=0.5))
        assert_complete(run, box)
        assert "queue full" in run.stderr
        assert box.stats()["max_queued_or_processing"] <= 10


def test_the_jobs_in_queue_setting_is_respected(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.3, data_start=START, data_end=END) as box:
        run = run_tap(tmp_path, config_for(box, window_days=5, max_jobs_in_queue=3))
        assert_complete(run, box)
        assert box.stats()["max_queued_or_processing"] <= 3
        assert box.stats()["max_processing"] == 2


def test_marketo_export_quota_stops_cleanly_and_the_next_run_finishes(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(export_quota_bytes=500_000)
        first = run_tap(tmp_path, config_for(box, window_days=7, max_jobs_in_queue=1))
        assert_clean_stop(first, box, "export quota")
        box.set_faults(export_quota_bytes=500 * 1024 * 1024)
        finish_after(first, box, tmp_path, window_days=7)


def test_the_tap_never_passes_its_own_daily_export_cap(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        warm_up = run_tap(tmp_path / "warm", config_for(box, end_date="2024-01-15T00:00:00Z"))
        assert warm_up.returncode == 0, warm_up.stderr
        used = box.stats()["export_bytes_today"]
        cap = used * 1.95  # over half used: the first job runs alone to learn its size
        config = config_for(box, window_days=3, max_export_mb_per_day=cap / 1024 / 1024)
        run = run_tap(tmp_path / "capped", config, state=warm_up.last_state)
        assert_clean_stop(run, box, "max_export_mb_per_day")
        assert box.stats()["export_bytes_today"] <= cap
        assert len(box.stats()["jobs"]) >= 3  # it did use what room there was
        assert run.last_state["bookmarks"]["activities_visit_webpage"][
            "replication_key_value"] > "2024-01-15T00:00:00Z"


def test_a_job_that_keeps_failing_stops_with_its_story(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(fail_jobs=100)
        run = run_tap(tmp_path, config_for(box, max_job_attempts=2))
        assert_clean_stop(run, box, "Failed 2 times")
        assert "Export failed due to internal error" in run.stderr
        finish_after(run, box, tmp_path)


def test_files_that_are_gone_stop_cleanly(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(expire_files=True)
        run = run_tap(tmp_path, config_for(box, max_job_attempts=2))
        assert_clean_stop(run, box, "never served its file")


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
        assert re.search(r"row \d+: \d+ cells where the header has", run.stderr)


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
        config = config_for(box, window_days=5)
        process = start_tap(tmp_path / "1", config)
        lines = read_until_jobs_in_flight(process)
        assert any(j["status"] in RUNNING for j in box.stats()["jobs"])
        # Marketo failing as the signal comes: the stop must not wait out retries.
        box.set_faults(http_5xx_rate=0.5)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rest, stderr = process.communicate(timeout=30)
        assert time.monotonic() - signalled < 10
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
