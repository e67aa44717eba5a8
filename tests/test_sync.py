"""The tap's main path against the sandbox over HTTP, run as a real process."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    END,
    MERGED,
    START,
    TapRun,
    all_guids,
    config_for,
    delivered_rows,
    parse_output,
    run_tap,
    tap_command,
)

from tap_marketo_activities.sandbox import Sandbox

DELETED = "activities_delete_lead"
BASE = ("marketoGUID", "leadId", "activityDate", "activityTypeId", "campaignId",
        "primaryAttributeValueId", "primaryAttributeValue", "attributes", "actionResult")


@pytest.fixture(scope="module")
def full_run(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> TapRun:
    run = run_tap(tmp_path_factory.mktemp("full"), config_for(sandbox))
    assert run.returncode == 0, run.stderr
    return run


def stream_of_type(catalog: dict[str, Any]) -> dict[int, str]:
    return {e["schema"]["properties"]["activityTypeId"]["enum"][0]: e["stream"]
            for e in catalog["streams"] if e["stream"] != MERGED}


def titles(catalog: dict[str, Any]) -> dict[str, dict[str, tuple[str, str]]]:
    """stream -> {column: (attribute display name, JSON type)} for the attribute columns."""
    return {e["stream"]: {c: (p["title"], p["type"][0])
                          for c, p in e["schema"]["properties"].items() if "title" in p}
            for e in catalog["streams"]}


def as_column(value: Any, json_type: str) -> Any:
    """What a typed column should hold for an attribute value the sandbox generated."""
    if value is None:
        return None
    if json_type == "string" and not isinstance(value, str):
        return json.dumps(value)
    return value


def assert_delivered_once(run: TapRun, expected: list[dict[str, Any]],
                          catalog: dict[str, Any]) -> None:
    streams = stream_of_type(catalog)
    columns = titles(catalog)
    got = {r["marketoGUID"]: (stream, r) for stream, rows in run.records.items() for r in rows
           if stream not in (DELETED, MERGED)}  # their own tests
    assert [g for g, n in run.guids().items() if n > 1] == []
    assert sorted(got) == sorted(a["marketoGUID"] for a in expected)
    for activity in expected:
        stream, record = got[activity["marketoGUID"]]
        assert stream == streams[activity["activityTypeId"]]
        # actionResult comes only when a catalog selects it (tests/test_options.py).
        assert "actionResult" not in record
        assert {k: record[k] for k in BASE if k != "actionResult"} == \
            {k: activity[k] for k in BASE if k != "actionResult"}
        for column, (title, json_type) in columns[stream].items():
            value = (activity["attributes"] or {}).get(title)
            assert record[column] == as_column(value, json_type), column


def test_discovery_offers_one_stream_per_exportable_type(catalog: dict[str, Any],
                                                         sandbox: Sandbox) -> None:
    names = {e["stream"] for e in catalog["streams"]}
    assert {"activities_visit_webpage", "activities_new_lead",
            "activities_change_status_in_progression", "activities_webinar_attended_zoom",
            "activities_webinar_attended_zoom_100003", "activities_attended_trade_show",
            } <= names
    assert set(stream_of_type(catalog)) == {t["id"] for t in sandbox.activity_types()}
    assert stream_of_type(catalog)[37] == DELETED


def test_catalog_metadata_is_incremental_on_activity_date(catalog: dict[str, Any]) -> None:
    for entry in catalog["streams"]:
        top = next(m["metadata"] for m in entry["metadata"] if m["breadcrumb"] == [])
        assert entry["replication_method"] == "INCREMENTAL"
        assert top["replication-key"] == "activityDate"
        assert top["valid-replication-keys"] == ["activityDate"]
        assert top["table-key-properties"] == (
            ["marketoGUID", "mergedLeadId"] if entry["stream"] == MERGED else ["marketoGUID"])
        assert entry["replication_key"] == "activityDate"


def test_typed_columns_follow_marketo_data_types(catalog: dict[str, Any]) -> None:
    visit = next(e for e in catalog["streams"] if e["stream"] == "activities_visit_webpage")
    props = visit["schema"]["properties"]
    assert props["primaryAttributeValueId"]["type"] == ["integer", "null"]
    assert props["personalized_url"]["type"] == ["boolean", "null"]
    assert props["activityDate"]["format"] == "date-time"


def test_every_activity_comes_out_once_typed_in_its_own_stream(
        full_run: TapRun, sandbox: Sandbox, catalog: dict[str, Any]) -> None:
    assert_delivered_once(full_run, delivered_rows(sandbox, START, END), catalog)
    assert set(full_run.guids()) == all_guids(sandbox)


def test_one_export_job_per_window_serves_all_streams(sandbox: Sandbox, full_run: TapRun
                                                       ) -> None:
    assert full_run.returncode == 0
    windows = {(j["startAt"], j["endAt"]) for j in sandbox.stats()["jobs"]}
    # No export size known yet: a one-day probe first, then the rest of the grid window.
    assert ("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z") in windows
    assert ("2024-01-02T00:00:00Z", "2024-01-21T00:00:00Z") in windows
    assert ("2024-01-21T00:00:00Z", "2024-02-10T00:00:00Z") in windows
    per_window: dict[tuple[str, str], int] = {}
    for job in sandbox.stats()["jobs"]:
        key = (job["startAt"], job["endAt"])
        per_window[key] = per_window.get(key, 0) + 1
    assert max(per_window.values()) <= 2  # the full run and the discovery fixture's none


def test_one_list_call_stands_for_many_status_calls(fresh_sandbox: Sandbox, tmp_path: Path
                                                     ) -> None:
    config = config_for(fresh_sandbox, window_days=5, poll_interval_seconds=0.5)
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    calls = fresh_sandbox.stats()["calls"]
    jobs = len(fresh_sandbox.stats()["jobs"])
    status_calls = calls["GET /bulk/v1/activities/export/{exportId}/status.json"]
    # Polled one by one, each job would ask for its status every 0.5 s of its life; with
    # the shared listing a job asks once it has left the queue, rarely more.
    assert jobs == 12 + 1 and status_calls < 2 * jobs  # 12 windows and the first day's probe
    assert calls["GET /bulk/v1/activities/export.json"] >= 2


def test_state_is_checkpointed_after_every_window(full_run: TapRun) -> None:
    marks = [s["bookmarks"]["activities_visit_webpage"].get("replication_key_value")
             for s in full_run.states if "activities_visit_webpage" in s.get("bookmarks", {})]
    assert "2024-01-21T00:00:00Z" in marks
    assert "2024-02-10T00:00:00Z" in marks
    assert full_run.last_state["bookmarks"]["activities_visit_webpage"][
        "replication_key_value"] == END
    assert "progress_markers" not in json.dumps(full_run.last_state)


def test_a_second_run_resumes_where_the_first_ended(fresh_sandbox: Sandbox, tmp_path: Path,
                                                    catalog: dict[str, Any]) -> None:
    middle = "2024-02-05T00:00:00Z"
    first = run_tap(tmp_path / "1", config_for(fresh_sandbox, end_date=middle))
    assert first.returncode == 0, first.stderr
    jobs_before = len(fresh_sandbox.stats()["jobs"])
    second = run_tap(tmp_path / "2", config_for(fresh_sandbox), state=first.last_state)
    assert second.returncode == 0, second.stderr
    both = first.guids() + second.guids()
    expected = delivered_rows(fresh_sandbox, START, END)
    assert set(both) == all_guids(fresh_sandbox)
    repeated = {g for g, n in both.items() if n > 1}
    at_bookmark = {a["marketoGUID"] for a in expected if a["activityDate"] == middle}
    assert repeated <= at_bookmark
    assert min(j["startAt"] for j in fresh_sandbox.stats()["jobs"][jobs_before:]) == middle


def test_an_empty_window_still_moves_the_bookmark(fresh_sandbox: Sandbox, tmp_path: Path
                                                  ) -> None:
    config = config_for(fresh_sandbox, start_date="2025-01-01", end_date="2025-01-15")
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr
    assert sum(len(r) for r in run.records.values()) == 0
    mark = run.last_state["bookmarks"]["activities_visit_webpage"]["replication_key_value"]
    assert mark == "2025-01-15T00:00:00Z"


def test_a_run_killed_mid_way_loses_nothing(tmp_path: Path, catalog: dict[str, Any]) -> None:
    with Sandbox(job_latency=1.0, data_start=START, data_end=END) as box:
        config = config_for(box, window_days=7, max_jobs_in_queue=2)
        process = subprocess.Popen(tap_command(tmp_path / "1", config), stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        assert process.stdout is not None
        lines = []
        states = 0
        for line in process.stdout:
            lines.append(line)
            if '"type":"STATE"' in line.replace(" ", "") and "replication_key_value" in line:
                states += 1
                if states == 3:
                    process.send_signal(signal.SIGKILL)
                    break
        process.wait(timeout=30)
        killed = TapRun(process.returncode, parse_output("".join(lines)), "")
        assert killed.returncode != 0
        resumed = run_tap(tmp_path / "2", config, state=killed.last_state)
        assert resumed.returncode == 0, resumed.stderr
        delivered = killed.guids() + resumed.guids()
        assert set(delivered) == all_guids(box)


def test_a_sync_with_a_catalog_makes_no_discovery_call(
        fresh_sandbox: Sandbox, tmp_path: Path, catalog: dict[str, Any]) -> None:
    chosen = json.loads(json.dumps(catalog))
    for entry in chosen["streams"]:
        top = next(m for m in entry["metadata"] if m["breadcrumb"] == [])
        top["metadata"]["selected"] = entry["stream"] in ("activities_visit_webpage",
                                                          "activities_new_lead")
        for field in entry["metadata"]:
            if field["breadcrumb"] in (["properties", "campaignId"],
                                       ["properties", "webpage_url"]):
                field["metadata"]["selected"] = False
    run = run_tap(tmp_path, config_for(fresh_sandbox), catalog=chosen)
    assert run.returncode == 0, run.stderr
    assert fresh_sandbox.stats()["types_calls"] == 0
    assert set(run.records) == {"activities_visit_webpage", "activities_new_lead"}
    expected = delivered_rows(fresh_sandbox, START, END, type_ids=[1, 12])
    assert sorted(run.guids()) == sorted(a["marketoGUID"] for a in expected)
    for rows in run.records.values():
        assert all("campaignId" not in r and "webpage_url" not in r for r in rows)
    assert all("client_ip_address" in r for r in run.records["activities_visit_webpage"])
    for job in fresh_sandbox.stats()["jobs"]:
        assert job["activityTypeIds"] == [1, 12]
        assert "campaignId" not in job["fields"]  # no selected field needs it


def test_activity_type_ids_limits_discovery(sandbox: Sandbox, tmp_path: Path) -> None:
    run = run_tap(tmp_path, config_for(sandbox, activity_type_ids=[1, 100003]),
                  extra=("--discover",))
    assert run.returncode == 0, run.stderr
    assert {e["stream"] for e in run.messages[0]["streams"]} == {
        "activities_visit_webpage", "activities_webinar_attended_zoom_100003"}


@pytest.mark.parametrize(("change", "words"), [
    ({"start_date": "last tuesday"}, "start_date"),
    ({"start_date": "2024-05-01", "end_date": "2024-04-01"}, "must be before end_date"),
    ({"window_days": 0}, "window_days"),
    ({"window_days": 40}, "window_days"),
    ({"base_url": "ftp://284-RPR-133.mktorest.com"}, "base_url"),
])
def test_bad_settings_stop_before_any_call(fresh_sandbox: Sandbox, tmp_path: Path,
                                           change: dict[str, Any], words: str) -> None:
    run = run_tap(tmp_path, {**config_for(fresh_sandbox), **change})
    assert run.returncode != 0
    assert words in run.stderr
    assert "Traceback" not in run.stderr
    assert fresh_sandbox.stats()["token_calls"] == 0


def test_refused_credentials_are_one_line_and_start_no_job(fresh_sandbox: Sandbox,
                                                           tmp_path: Path) -> None:
    run = run_tap(tmp_path, config_for(fresh_sandbox, client_secret="wrong-secret"))
    assert run.returncode == 1
    assert "refused the credentials" in run.stderr
    assert "Traceback" not in run.stderr
    assert "wrong-secret" not in run.stderr
    assert fresh_sandbox.stats()["jobs"] == []


def test_the_documented_smallest_values_are_accepted(sandbox: Sandbox, tmp_path: Path) -> None:
    """The SDK reads JSON numbers as Decimal: Decimal('0.1') is below the float 0.1."""
    config = config_for(sandbox, api_limit_share=0.1, max_export_mb_per_day=0.001,
                        request_timeout_seconds=0.1, poll_interval_seconds=0.01)
    run = run_tap(tmp_path, config, extra=("--discover",))
    assert run.returncode == 0, run.stderr[-2000:]
    bad = run_tap(tmp_path / "bad", {**config, "api_limit_share": 0.09}, extra=("--discover",))
    errors = [line for line in bad.stderr.splitlines() if "| ERROR" in line]
    assert bad.returncode == 1 and len(errors) == 1 and "api_limit_share" in errors[0]
