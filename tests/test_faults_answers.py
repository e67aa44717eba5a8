"""Odd answers, files that are not whole or not what was asked, redirects, a user's logging
config, a dead endpoint and bad settings: every sync delivers everything, or stops with one
short ERROR line and a state the next run finishes from."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from conftest import (
    END,
    START,
    TapRun,
    assert_clean_stop,
    assert_complete,
    assert_no_secrets,
    config_for,
    finish_after,
    run_tap,
)

from tap_marketo_activities.sandbox import Sandbox

MAX_ERROR_CHARS = 500
DELETED = "activities_delete_lead"  # from a REST call, not from export files


def one_error(run: TapRun) -> str:
    """The one ERROR line a failure prints, short."""
    errors = [line for line in run.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1, run.stderr[-3000:]
    assert len(errors[0]) <= MAX_ERROR_CHARS, errors[0]
    assert "Traceback" not in run.stderr
    return errors[0]


# (route, kind of odd answer, what the log shows): the first two answers of that call are
# odd, then Marketo answers properly again.
ODD_THEN_FINE = {
    "a status with an unknown job status": ("status", "unknown_status", "unknown job status"),
    "a status with an empty result": ("status", "empty_result", "no result"),
    "a status without success": ("status", "no_success", "not Marketo's envelope"),
    "a create without exportId": ("create", "no_export_id", "a job without exportId"),
    "an enqueue with a null result": ("enqueue", "null_result", "not a list"),
    "a list where an object belongs": ("enqueue", "list_result", "not an object"),
    "a job listing that is not the envelope": ("list_jobs", "not_envelope", "envelope"),
    "an HTML page served as the file": ("file", "html", "text/html instead of the file"),
    "a JSON body served as the file": ("file", "json_file", "json"),
    "the activity types not in the envelope": ("types", "not_envelope", "envelope"),
    "an enqueue that leaves the job Created": ("enqueue", "stays_created",
                                               "still Created after its enqueue"),
}


@pytest.mark.parametrize("case", ODD_THEN_FINE)
def test_odd_answers_are_retried_and_everything_is_delivered(tmp_path: Path,
                                                             case: str) -> None:
    route, kind, logged = ODD_THEN_FINE[case]
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(odd_answers={route: kind}, odd_answer_times=2)
        run = run_tap(tmp_path, config_for(box))
        assert_complete(run, box)
        assert box.stats()["injected"][f"odd {route}"] == 2
        assert logged in run.stderr


@pytest.mark.parametrize(("route", "kind", "call"), [
    ("status", "unknown_status", "/status.json answered HTTP 200 with an unknown job status"),
    ("file", "html", "/file.json answered HTTP 200 with text/html instead of the file"),
])
def test_answers_that_stay_odd_stop_with_the_call_and_an_excerpt(
        tmp_path: Path, route: str, kind: str, call: str) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(odd_answers={route: kind})
        run = run_tap(tmp_path, config_for(box, max_retry_seconds=2))
        assert_clean_stop(run, box, call)
        assert "still so after 2 s of retries" in one_error(run)
        finish_after(run, box, tmp_path)


def test_no_activity_types_fails_discovery_with_one_line(tmp_path: Path) -> None:
    with Sandbox(data_start=START, data_end=END) as box:
        box.set_faults(odd_answers={"types": "empty_result"})
        run = run_tap(tmp_path, config_for(box), extra=("--discover",))
        assert run.returncode == 1
        assert "lists no activity types" in one_error(run)


# ---- files: whole, and what was asked ---------------------------------------------------

def test_a_cut_download_without_size_or_checksum_is_resumed(tmp_path: Path) -> None:
    # Content-Length is all that tells the cut: the download resumes from where it broke.
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(hide_status_fields=["fileSize", "fileChecksum"], cut_file_times=1)
        run = run_tap(tmp_path, config_for(box))
        assert_complete(run, box)
        assert box.stats()["injected"]["cut_file"] >= 3
        assert "resuming" in run.stderr


def test_a_cut_file_with_only_its_record_count_stops_before_its_window(tmp_path: Path) -> None:
    # No size, no checksum, no Content-Length, Range ignored: the row count tells the cut.
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(hide_status_fields=["fileSize", "fileChecksum"], cut_file_times=1,
                       close_delimited_files=True, ignore_ranges=True)
        run = run_tap(tmp_path, config_for(box))
        assert_clean_stop(run, box, "so it is not whole")
        assert "Marketo counted" in one_error(run)
        bookmarks = run.last_state.get("bookmarks", {})
        assert all(b.get("replication_key_value", START) < END for name, b in bookmarks.items()
                   if name != DELETED)
        finish_after(run, box, tmp_path)


def test_a_cut_file_that_nothing_describes_is_confirmed_by_its_length(tmp_path: Path) -> None:
    # No size, checksum or record count, no Content-Length, the cut at a line end: only a
    # Range request past the end (416, Content-Range: bytes */<size>) can tell.
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(hide_status_fields=["fileSize", "fileChecksum", "numberOfRecords"],
                       cut_file_times=1, close_delimited_files=True)
        run = run_tap(tmp_path, config_for(box))
        assert_complete(run, box)
        assert box.stats()["injected"]["cut_file"] >= 3
        assert "resuming" in run.stderr


def test_a_file_whose_length_nothing_confirms_is_refused_and_its_window_kept(
        tmp_path: Path) -> None:
    # As above, and the server does not confirm the length either (no Range support).
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(hide_status_fields=["fileSize", "fileChecksum", "numberOfRecords"],
                       cut_file_times=1, close_delimited_files=True, ignore_ranges=True)
        run = run_tap(tmp_path, config_for(box))
        assert_clean_stop(run, box, "nothing confirms that it is whole")
        one_error(run)
        assert set(run.records) <= {DELETED}
        finish_after(run, box, tmp_path)


@pytest.mark.parametrize(("defect", "says"), [
    ("missing_column", "lacks the requested column(s) activityDate"),
    ("unknown_column", "names a column Marketo does not export"),
    ("short_rows", "cells of its header"),
    ("long_rows", "cells of its header"),
])
def test_a_file_unlike_what_was_asked_is_refused_and_asked_for_again(
        tmp_path: Path, defect: str, says: str) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(file_defect=defect)
        run = run_tap(tmp_path, config_for(box, max_job_attempts=2))
        assert_clean_stop(run, box, says)
        one_error(run)
        assert "creating a new job" in run.stderr
        # No record of a refused file went out, only the deleted leads (a REST call's).
        assert set(run.records) <= {DELETED}
        # The next run's jobs re-attached from the state serve the same refused files: they
        # are asked for again, and the run delivers everything.
        finish_after(run, box, tmp_path)


def test_rows_of_a_type_not_asked_for_are_skipped_and_reported_once_per_file(
        tmp_path: Path) -> None:
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        box.set_faults(foreign_type_rows=3)
        run = run_tap(tmp_path, config_for(box))
        assert_complete(run, box)  # exactly the truth: none of the foreign rows
        files = len(box.stats()["jobs"])
        assert len(re.findall(r"row \d+: rows of an activity type", run.stderr)) == files
        assert "rows of an activity type that was not asked for: skipped: 3" in run.stderr


# ---- the secret stays home ----------------------------------------------------------

@pytest.mark.parametrize("switch", ["redirect_identity_to", "redirect_calls_to"])
def test_a_redirect_to_another_host_is_refused(tmp_path: Path, switch: str) -> None:
    with Sandbox(data_start=START, data_end=END) as box, \
            Sandbox(data_start=START, data_end=END) as other:
        elsewhere = f"localhost:{other.base_url.rsplit(':', 1)[1]}"
        box.set_faults(**{switch: f"http://{elsewhere}"})
        run = run_tap(tmp_path, config_for(box))
        assert run.returncode == 1
        assert f"redirected to {elsewhere}; base_url must be" in one_error(run)
        assert other.stats()["calls"] == {}  # neither the secret nor the token went there
        assert_no_secrets(run, box)


LOG_CONFIG = """version: 1
disable_existing_loggers: false
formatters:
  plain: {format: "%(asctime)s | %(levelname)-8s | %(name)s | %(message)s"}
handlers:
  stderr: {class: logging.StreamHandler, formatter: plain, stream: ext://sys.stderr}
root: {level: INFO, handlers: [stderr]}
loggers:
  urllib3: {level: DEBUG}
"""


def test_a_logging_config_with_urllib3_at_debug_shows_no_secret(tmp_path: Path) -> None:
    with Sandbox(job_latency=0.1, data_start=START, data_end=END, token_ttl=3) as box:
        (tmp_path / "logging.yaml").write_text(LOG_CONFIG)
        run = run_tap(tmp_path, config_for(box, activity_type_ids=[1]),
                      env={"SINGER_SDK_LOG_CONFIG": str(tmp_path / "logging.yaml")})
        assert run.returncode == 0, run.stderr[-2000:]
        assert "/identity/oauth/token?grant_type=client_credentials" in run.stderr
        assert "client_secret=***" in run.stderr
        assert_no_secrets(run, box)


# ---- a dead endpoint, bad settings ------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(("base_url", "what"), [
    ("refused", "the connection was refused"),
    ("tls", "the TLS handshake failed"),
])
def test_a_dead_endpoint_fails_at_once_with_one_line(tmp_path: Path, base_url: str,
                                                     what: str) -> None:
    with Sandbox(data_start=START, data_end=END) as box:
        if base_url == "tls":  # https to a plain-HTTP server
            base_url = box.base_url.replace("http://", "https://")
        else:
            base_url = f"http://127.0.0.1:{closed_port()}"
        # 300 s of retries would outlast the timeout: the failure must not retry.
        run = run_tap(tmp_path, config_for(box, base_url=base_url, max_retry_seconds=300),
                      timeout=60)
        assert run.returncode == 1
        line = one_error(run)
        assert f"Cannot reach base_url {base_url}: {what}" in line
        assert "Retrying" not in run.stderr


@pytest.mark.parametrize(("setting", "says"), [
    ({"base_url": "http://user:pw@127.0.0.1:1"}, "must not carry a user name or password"),
    ({"base_url": "http://127.0.0.1 :1"}, "is not a Marketo endpoint"),
    ({"activity_type_ids": [-1]}, "positive type ids"),
    ({"activity_type_ids": []}, "non-empty list"),
    ({"raw_files_dir": "/proc/raw"}, "raw_files_dir '/proc/raw' cannot be written"),
    ({"window_days": 99}, "window_days is 99"),
    ({"client_id": 5}, "client_id"),
])
def test_a_bad_setting_is_one_line_before_any_call(tmp_path: Path, setting: dict,
                                                   says: str) -> None:
    with Sandbox(data_start=START, data_end=END) as box:
        run = run_tap(tmp_path, config_for(box, **setting))
        assert run.returncode == 1
        assert says in one_error(run)
        assert box.stats()["calls"] == {}


def test_an_unknown_setting_is_named_with_the_closest_one(tmp_path: Path, sandbox: Sandbox,
                                                          catalog: dict) -> None:
    run = run_tap(tmp_path, config_for(sandbox, windows_days=3, activity_type_ids=[1]),
                  extra=("--discover",))
    assert run.returncode == 0, run.stderr[-2000:]
    warnings = [line for line in run.stderr.splitlines() if "Unknown setting" in line]
    assert len(warnings) == 1
    assert "'windows_days': ignored; did you mean 'window_days'?" in warnings[0]
