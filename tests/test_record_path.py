"""One record path for every source of rows: Get Deleted Leads pages take the same per-stream
SDK loop as export rows, so BATCH, stream maps, --test's limit and counts behave alike."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from conftest import END, START, config_for, delivered_rows, run_tap

from tap_marketo_activities.sandbox import Sandbox

DELETED = "activities_delete_lead"
VISITS = "activities_visit_webpage"


def batch_config(folder: Path) -> dict:
    return {"encoding": {"format": "jsonl", "compression": "gzip"},
            "storage": {"root": folder.as_uri(), "prefix": "marketo-"}}


def guids_in_batches(messages: list[dict]) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for message in messages:
        if message["type"] == "BATCH":
            for url in message["manifest"]:
                with gzip.open(Path(urlsplit(url).path), "rt") as lines:
                    found.update((message["stream"], json.loads(line)["marketoGUID"])
                                 for line in lines if line.strip())
    return found


def test_batch_serves_deleted_leads_as_it_serves_bulk_streams(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    config = config_for(fresh_sandbox, activity_type_ids=[1, 37], rest_increments="off",
                        batch_config=batch_config(tmp_path / "batches"))
    run = run_tap(tmp_path, config)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [m for m in run.messages if m["type"] == "RECORD"] == []
    got = guids_in_batches(run.messages)
    deleted = {d["marketoGUID"] for d in fresh_sandbox.expected_deleted_leads(START)
               if d["activityDate"] < END}
    visits = {a["marketoGUID"] for a in delivered_rows(fresh_sandbox, START, END, [1])}
    assert deleted and visits
    assert {g for s, g in got if s == DELETED} == deleted
    assert {g for s, g in got if s == VISITS} == visits
    assert max(got.values()) == 1
    # The BATCH message of the deleted leads comes before the state that covers them.
    kinds = [(m["type"], m.get("stream")) for m in run.messages]
    first_batch = kinds.index(("BATCH", DELETED))
    moved = next(i for i, m in enumerate(run.messages) if m["type"] == "STATE"
                 and m["value"].get("bookmarks", {}).get(DELETED, {}).get(
                     "replication_key_value"))
    assert first_batch < moved


def test_a_failing_stream_map_on_deleted_leads_is_one_line_that_names_the_stream(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    maps = {DELETED: {"boom": "int(record['activityDate'][:4]) // 0"}}
    run = run_tap(tmp_path, config_for(fresh_sandbox, activity_type_ids=[1, 37],
                                       stream_maps=maps))
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1, run.stderr[-2000:]
    assert f"{DELETED}: the stream map failed" in errors[0]
    assert "bug of the tap" not in run.stderr and "Traceback" not in run.stderr
    assert not any(state.get("bookmarks", {}).get(DELETED, {}).get("replication_key_value")
                   for state in run.states)


def test_dash_dash_test_counts_what_it_wrote_for_deleted_leads(
        fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    run = run_tap(tmp_path, config_for(fresh_sandbox, activity_type_ids=[1, 37]),
                  extra=("--test",))
    assert run.returncode == 0, run.stderr[-3000:]
    written = Counter(m["stream"] for m in run.messages if m["type"] == "RECORD")
    assert written[DELETED] == 1
    summary = run.stderr.split("Sync summary:")[1]
    row = next(line for line in summary.splitlines() if line.startswith(DELETED))
    assert row.split()[1:] == ["1"]
    assert "no bookmark moved" in summary and "backfill is done" not in summary
