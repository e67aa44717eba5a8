"""Every option of Bulk Activity Extract: formats, fields, primary attribute filters, raw
files; and the deleted leads stream."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import END, START, config_for, delivered_rows, run_tap
from test_sync import assert_delivered_once

from tap_marketo_activities.sandbox import Sandbox


def select(catalog: dict[str, Any], streams: set[str],
           deselect: tuple[str, ...] = (), fields: tuple[str, ...] = ()) -> dict[str, Any]:
    chosen = json.loads(json.dumps(catalog))
    for entry in chosen["streams"]:
        for item in entry["metadata"]:
            if item["breadcrumb"] == []:
                item["metadata"]["selected"] = entry["stream"] in streams
            elif item["breadcrumb"][-1] in fields:
                item["metadata"]["selected"] = True
            elif item["breadcrumb"][-1] in deselect or (
                    "*attributes" in deselect and item["breadcrumb"][-1] not in BASE):
                item["metadata"]["selected"] = False
    return chosen


BASE = {"marketoGUID", "leadId", "activityDate", "activityTypeId", "campaignId",
        "primaryAttributeValueId", "primaryAttributeValue", "actionResult"}


@pytest.mark.parametrize(("export_format", "ssv_delimiter"),
                         [("TSV", ";"), ("SSV", ";"), ("SSV", " ")])
def test_every_format_parses_hostile_values(tmp_path: Path, catalog: dict[str, Any],
                                            export_format: str, ssv_delimiter: str) -> None:
    with Sandbox(job_latency=0.1, data_start=START, data_end=END,
                 ssv_delimiter=ssv_delimiter) as box:
        run = run_tap(tmp_path, config_for(box, export_format=export_format))
        assert run.returncode == 0, run.stderr[-2000:]
        assert {j["format"] for j in box.stats()["jobs"]} == {export_format}
        expected = [a for a in delivered_rows(box, START, END) if a["activityTypeId"] != 37]
        assert_delivered_once(run, expected, catalog)


def test_fields_follow_the_catalog(fresh_sandbox: Sandbox, tmp_path: Path,
                                   catalog: dict[str, Any]) -> None:
    chosen = select(catalog, {"activities_new_lead", "activities_visit_webpage"},
                    deselect=("actionResult", "attributes", "*attributes"))
    run = run_tap(tmp_path, config_for(fresh_sandbox), catalog=chosen)
    assert run.returncode == 0, run.stderr[-2000:]
    for job in fresh_sandbox.stats()["jobs"]:
        assert "attributes" not in job["fields"] and "actionResult" not in job["fields"]
    for rows in run.records.values():
        assert rows and all(set(r) <= BASE - {"actionResult"} for r in rows)


def test_action_result_is_exported_only_when_selected(fresh_sandbox: Sandbox, tmp_path: Path,
                                                      catalog: dict[str, Any]) -> None:
    run = run_tap(tmp_path, config_for(fresh_sandbox),
                  catalog=select(catalog, {"activities_send_email"}, fields=("actionResult",)))
    assert run.returncode == 0, run.stderr[-2000:]
    assert all("actionResult" in j["fields"] for j in fresh_sandbox.stats()["jobs"])
    results = {r["actionResult"] for r in run.records["activities_send_email"]}
    assert results <= {"succeeded", "skipped", "failed"} and len(results) >= 2


def test_action_result_is_not_selected_by_default_and_keeps_its_stream_on_bulk(
        fresh_sandbox: Sandbox, tmp_path: Path, catalog: dict[str, Any]) -> None:
    offered = select(catalog, {"activities_send_email", "activities_visit_webpage"})
    run = run_tap(tmp_path / "1", config_for(fresh_sandbox), catalog=offered)
    assert run.returncode == 0, run.stderr[-2000:]
    assert all("actionResult" not in j["fields"] for j in fresh_sandbox.stats()["jobs"])
    assert all("actionResult" not in r for rows in run.records.values() for r in rows)
    # A short increment: REST for the stream without actionResult, bulk for the other.
    chosen = select(catalog, {"activities_send_email", "activities_visit_webpage"},
                    fields=("actionResult",))
    for entry in chosen["streams"]:
        if entry["stream"] == "activities_visit_webpage":
            for item in entry["metadata"]:
                if item["breadcrumb"][-1:] == ["actionResult"]:
                    item["metadata"]["selected"] = False
    jobs = len(fresh_sandbox.stats()["jobs"])
    later = run_tap(tmp_path / "2", config_for(fresh_sandbox, end_date="2024-03-01T06:00:00Z"),
                    state=run.last_state, catalog=chosen)
    assert later.returncode == 0, later.stderr[-2000:]
    new_jobs = fresh_sandbox.stats()["jobs"][jobs:]
    assert [j["activityTypeIds"] for j in new_jobs] == [[6]]
    assert later.stderr.count("activities_send_email selects actionResult") == 1
    assert "through Get Lead Activities" in later.stderr


def test_primary_attribute_filters_narrow_their_types_only(fresh_sandbox: Sandbox,
                                                           tmp_path: Path,
                                                           catalog: dict[str, Any]) -> None:
    forms = sorted({a["primaryAttributeValue"]
                    for a in delivered_rows(fresh_sandbox, START, END, [2])})
    programs = sorted({a["primaryAttributeValueId"]
                       for a in delivered_rows(fresh_sandbox, START, END, [104])})
    assert len(forms) >= 2 and len(programs) >= 2
    filters = {"2": {"values": forms[:1]}, "104": {"ids": programs[:1]}}
    streams = {"activities_fill_out_form", "activities_change_status_in_progression",
               "activities_visit_webpage", "activities_open_email"}
    run = run_tap(tmp_path, config_for(fresh_sandbox, primary_attribute_filters=filters),
                  catalog=select(catalog, streams))
    assert run.returncode == 0, run.stderr[-2000:]
    expected = (delivered_rows(fresh_sandbox, START, END, [2], primary_values=forms[:1])
                + delivered_rows(fresh_sandbox, START, END, [104], primary_ids=programs[:1])
                + delivered_rows(fresh_sandbox, START, END, [1, 10]))
    assert_delivered_once(run, expected, catalog)
    type_sets = sorted({tuple(j["activityTypeIds"]) for j in fresh_sandbox.stats()["jobs"]})
    assert type_sets == [(1, 10), (2,), (104,)]


@pytest.mark.parametrize(("filters", "words"), [
    ({"1": {"ids": [1]}}, "only types"),
    ({"2": {"ids": [1], "values": ["A.B"]}}, "not both"),
    ({"104": {"ids": list(range(51))}}, "1 to 50"),
    ({"2": {"values": ["Contact Us"]}}, "Program.Asset"),
    ({"13": {"ids": ["x"]}}, "integer"),
])
def test_bad_filters_stop_before_any_call(fresh_sandbox: Sandbox, tmp_path: Path,
                                          filters: dict, words: str) -> None:
    run = run_tap(tmp_path, config_for(fresh_sandbox, primary_attribute_filters=filters))
    assert run.returncode != 0
    assert "primary_attribute_filters" in run.stderr and words in run.stderr
    assert fresh_sandbox.stats()["token_calls"] == 0


def test_raw_files_are_kept_as_marketo_sent_them(fresh_sandbox: Sandbox, tmp_path: Path,
                                                 catalog: dict[str, Any]) -> None:
    raw = tmp_path / "raw"
    config = config_for(fresh_sandbox, raw_files_dir=str(raw),
                        raw_files_column_header_names={"attributes": "Secondary Attributes"})
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr[-2000:]
    sidecars = sorted(raw.glob("*.json"))
    assert len(sidecars) == len(fresh_sandbox.stats()["jobs"]) == 3 + 1  # and the probe
    for sidecar in sidecars:
        meta = json.loads(sidecar.read_text())
        data = (raw / meta["file"]).read_bytes()
        assert meta["fileChecksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
        assert meta["startAt"] and meta["endAt"] and meta["activityTypeIds"]
        header = next(csv.reader([data.decode().split("\n", 1)[0]]))
        assert "Secondary Attributes" in header and "attributes" not in header
    expected = [a for a in delivered_rows(fresh_sandbox, START, END) if a["activityTypeId"] != 37]
    assert_delivered_once(run, expected, catalog)


def test_deleted_leads_are_a_stream_of_their_own(fresh_sandbox: Sandbox, tmp_path: Path,
                                                 catalog: dict[str, Any]) -> None:
    middle = "2024-02-01T00:00:00Z"
    chosen = select(catalog, {"activities_delete_lead"})
    first = run_tap(tmp_path / "1", config_for(fresh_sandbox, end_date=middle), catalog=chosen)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "may be gone" in first.stderr  # 2024 is more than 14 days ago
    second = run_tap(tmp_path / "2", config_for(fresh_sandbox), catalog=chosen,
                     state=first.last_state)
    assert second.returncode == 0, second.stderr[-2000:]
    expected = [d for d in fresh_sandbox.expected_deleted_leads(START) if d["activityDate"] < END]
    got = first.records["activities_delete_lead"] + second.records["activities_delete_lead"]
    assert sorted(r["marketoGUID"] for r in got) == sorted(d["marketoGUID"] for d in expected)
    by_guid = {r["marketoGUID"]: r for r in got}
    for deleted in expected:
        record = by_guid[deleted["marketoGUID"]]
        assert record["leadId"] == deleted["leadId"]
        assert record["activityDate"] == deleted["activityDate"]
        assert record["attributes"] == {a["name"]: a["value"] for a in deleted["attributes"]}
    assert fresh_sandbox.stats()["jobs"] == []  # never a bulk export
    assert second.last_state["bookmarks"]["activities_delete_lead"][
        "replication_key_value"] == END
