"""Export jobs and their files under faults (queue, quotas, failed, stuck and lost jobs,
broken downloads): everything delivered, or a clean stop the next run finishes from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import (
    END,
    START,
    assert_clean_stop,
    assert_complete,
    assert_quota_day_stop,
    config_for,
    finish_after,
    run_tap,
)

from tap_marketo_activities.sandbox import Sandbox

# (faults, tap settings, what the log shows, what the sandbox's jobs show)
RECOVERABLE: dict[str, tuple[dict[str, Any], dict[str, Any], str, tuple[str, int] | None]] = {
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
        # Bulk only: with the quota gone, REST increments would carry on (test_increments.py).
        first = run_tap(tmp_path, config_for(box, window_days=7, max_jobs_in_queue=1,
                                             rest_increments="off"))
        assert_quota_day_stop(first, box, "export quota")
        box.set_faults(export_quota_bytes=500 * 1024 * 1024)
        finish_after(first, box, tmp_path, window_days=7)


def test_the_tap_never_passes_its_own_daily_export_cap(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        warm_up = run_tap(tmp_path / "warm", config_for(box, end_date="2024-01-15T00:00:00Z"))
        assert warm_up.returncode == 0, warm_up.stderr
        used = box.stats()["export_bytes_today"]
        cap = used * 1.95  # over half used: the first job runs alone to learn its size
        config = config_for(box, window_days=3, max_export_mb_per_day=cap / 1024 / 1024,
                            rest_increments="off")
        run = run_tap(tmp_path / "capped", config, state=warm_up.last_state)
        assert_quota_day_stop(run, box, "max_export_mb_per_day")
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
