"""Marketo's call limits and call failures (tokens, 5xx, resets, 606, 607, pacing): every
sync either delivers everything or stops cleanly with a state the next run finishes from."""

from __future__ import annotations

from pathlib import Path

from conftest import (
    END,
    RUNNING,
    START,
    assert_complete,
    assert_no_secrets,
    config_for,
    finish_after,
    run_tap,
)

from tap_marketo_activities.sandbox import Sandbox


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
