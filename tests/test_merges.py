"""merged_leads (issue 18): one record per lead merged away, from the Merge Leads rows of the
same export jobs and Get Lead Activities reads as every other stream."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import END, MERGED, START, config_for, delivered_rows, run_tap
from test_options import select

from tap_marketo_activities.merges import MERGE_FIELDS, NOT_A_LIST, parse_merge_ids
from tap_marketo_activities.sandbox import Sandbox
from tap_marketo_activities.sandbox.merges import BAD_MERGE_IDS, MERGE_IDS_STYLES, write_ids
from tap_marketo_activities.schema import EXPORT_COLUMNS

MERGE_LEADS = "activities_merge_leads"
VISITS = "activities_visit_webpage"
MID = "2024-02-01T00:00:00Z"
BULK = {"rest_increments": "off"}


def expected_merges(box: Sandbox, start: str, end: str) -> list[str]:
    return sorted(json.dumps(p, sort_keys=True) for p in box.expected_merged_leads(start, end)
                  if p["activityDate"] < end)


def guid(record: dict[str, Any]) -> str:
    return str(record["marketoGUID"])


def job_spec(job: dict[str, Any]) -> str:
    return json.dumps([job[k] for k in ("startAt", "endAt", "activityTypeIds", "fields")])


def got_merges(*runs: Any) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for run in runs for r in run.records[MERGED])


@pytest.mark.parametrize("style", [s for s in MERGE_IDS_STYLES if s != "mixed"])
def test_merge_ids_in_every_style_marketo_writes(style: str) -> None:
    assert parse_merge_ids(write_ids([1520655, 1797020], style)) == [1520655, 1797020]
    assert parse_merge_ids(write_ids([42], style)) == [42]


@pytest.mark.parametrize("value", ["[1,2]", "1,2", " [ 1 , 2 ] ", "1, 2", [1, 2], "[1,2,2]"])
def test_merge_ids_with_or_without_brackets_and_spaces(value: Any) -> None:
    assert parse_merge_ids(value) == [1, 2]


@pytest.mark.parametrize("value", [*BAD_MERGE_IDS, "[1,2", "1,2]", "", "1 2", "-3", "0",
                                   "١٢", None, True, 1.0, [], [1, "2"], {"id": 1}])
def test_merge_ids_that_are_no_list_of_integers(value: Any) -> None:
    assert parse_merge_ids(value) is None


def test_alone_it_asks_type_32_and_delivers_one_record_per_lead_merged_away(
        catalog: dict[str, Any], tmp_path: Path) -> None:
    with Sandbox(job_latency=0.1, data_start=START, data_end=END) as box:
        run = run_tap(tmp_path, config_for(box, **BULK), catalog=select(catalog, {MERGED}))
        assert run.returncode == 0, run.stderr[-3000:]
        assert set(run.records) == {MERGED}
        assert got_merges(run) == expected_merges(box, START, END)
        jobs = box.stats()["jobs"]
        assert jobs and all(j["activityTypeIds"] == [32] for j in jobs)
        assert all(j["fields"] == [c for c in EXPORT_COLUMNS if c in MERGE_FIELDS]
                   for j in jobs)
    assert all(type(r["leadId"]) is int and type(r["mergedLeadId"]) is int
               for r in run.records[MERGED])
    assert set(run.last_state["bookmarks"][MERGED]) >= {"replication_key_value"}


def test_beside_activity_streams_the_same_jobs_serve_both(
        catalog: dict[str, Any], tmp_path: Path) -> None:
    streams = {MERGE_LEADS, VISITS}
    with Sandbox(job_latency=0.1, data_start=START, data_end=END) as box:
        alone = run_tap(tmp_path / "a", config_for(box, **BULK), catalog=select(catalog, streams))
        jobs_alone = box.stats()["jobs"]
    with Sandbox(job_latency=0.1, data_start=START, data_end=END) as box:
        both = run_tap(tmp_path / "b", config_for(box, **BULK),
                       catalog=select(catalog, streams | {MERGED}))
        jobs_both = box.stats()["jobs"]
        assert both.returncode == 0, both.stderr[-3000:]
        assert got_merges(both) == expected_merges(box, START, END)
    assert alone.returncode == 0, alone.stderr[-3000:]
    for stream in streams:  # rows of a file come in no particular order
        assert sorted(both.records[stream], key=guid) == sorted(alone.records[stream], key=guid)
    assert sorted(map(job_spec, jobs_both)) == sorted(map(job_spec, jobs_alone))
    assert all(j["activityTypeIds"] == [1, 32] for j in jobs_both)
    # Merge IDs is text as Marketo writes it: no cast warning on good data.
    assert all(r["merge_ids"].startswith("[") for r in both.records[MERGE_LEADS])
    assert "uncastable" not in both.stderr and "not a valid value" not in both.stderr


def test_a_second_run_from_the_state_delivers_no_merge_twice(
        sandbox: Sandbox, catalog: dict[str, Any], tmp_path: Path) -> None:
    chosen = select(catalog, {MERGE_LEADS, MERGED})
    first = run_tap(tmp_path / "1", config_for(sandbox, end_date=MID, **BULK), catalog=chosen)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.last_state["bookmarks"][MERGED]["replication_key_value"] == MID
    second = run_tap(tmp_path / "2", config_for(sandbox, **BULK), catalog=chosen,
                     state=first.last_state)
    assert second.returncode == 0, second.stderr[-3000:]
    assert first.records[MERGED] and second.records[MERGED]
    both = got_merges(first, second)
    assert len(set(both)) == len(both)
    assert both == expected_merges(sandbox, START, END)
    again = run_tap(tmp_path / "3", config_for(sandbox, **BULK), catalog=chosen,
                    state=second.last_state)
    assert again.returncode == 0 and again.records[MERGED] == []


def test_bad_merge_ids_are_counted_and_the_activity_stays_whole(
        catalog: dict[str, Any], tmp_path: Path) -> None:
    with Sandbox(job_latency=0.1, data_start=START, data_end=MID, merge_ids="mixed",
                 bad_merge_ids_every=3) as box:
        run = run_tap(tmp_path, config_for(box, end_date=MID, **BULK),
                      catalog=select(catalog, {MERGE_LEADS, MERGED}))
        assert run.returncode == 0, run.stderr[-3000:]
        assert got_merges(run) == expected_merges(box, START, MID)
        merges = delivered_rows(box, START, MID, type_ids=[32])
    bad = [a for a in merges if a["attributes"]["Merge IDs"] in BAD_MERGE_IDS]
    assert bad and len(run.records[MERGE_LEADS]) == len(merges)
    by_guid = {r["marketoGUID"]: r for r in run.records[MERGE_LEADS]}
    for activity in bad:
        assert by_guid[activity["marketoGUID"]]["attributes"] == activity["attributes"]
    counted = sum(int(line.rsplit(f"{NOT_A_LIST}: ", 1)[1].split(",")[0])
                  for line in run.stderr.splitlines() if "had problems" in line)
    assert counted == len(bad)


def test_a_short_increment_reads_merges_through_get_lead_activities(
        sandbox: Sandbox, catalog: dict[str, Any], tmp_path: Path) -> None:
    since = (dt.datetime.fromisoformat(END.replace("Z", "+00:00"))
             - dt.timedelta(hours=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    state = {"bookmarks": {s: {"replication_key": "activityDate",
                               "replication_key_value": since}
                           for s in (MERGE_LEADS, MERGED)}}
    jobs_before = len(sandbox.stats()["jobs"])
    run = run_tap(tmp_path, config_for(sandbox), state=state,
                  catalog=select(catalog, {MERGE_LEADS, MERGED}))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "through Get Lead Activities" in run.stderr
    assert len(sandbox.stats()["jobs"]) == jobs_before
    assert run.records[MERGED] and got_merges(run) == expected_merges(sandbox, since, END)
    assert sorted(r["marketoGUID"] for r in run.records[MERGE_LEADS]) == sorted(
        a["marketoGUID"] for a in delivered_rows(sandbox, since, END, type_ids=[32]))
    assert run.last_state["bookmarks"][MERGED]["replication_key_value"] == END
