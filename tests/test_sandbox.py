"""Tests of the fake Marketo server itself, over loopback HTTP."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from tap_marketo_activities.sandbox import Sandbox

EXPORT = "/bulk/v1/activities/export"
WINDOW = {"startAt": "2024-01-02T00:00:00Z", "endAt": "2024-01-04T00:00:00Z"}
ALL_FIELDS = ["marketoGUID", "leadId", "activityDate", "activityTypeId", "campaignId",
              "primaryAttributeValueId", "primaryAttributeValue", "attributes", "actionResult"]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(seed=3, job_latency=0.05, activities_per_day=96) as sb:
        yield sb


def token(sb: Sandbox) -> str:
    answer = requests.get(sb.base_url + "/identity/oauth/token", params={
        "grant_type": "client_credentials", "client_id": sb.config["client_id"],
        "client_secret": sb.config["client_secret"]}, timeout=5)
    assert answer.status_code == 200
    return answer.json()["access_token"]


def session(sb: Sandbox) -> requests.Session:
    http = requests.Session()
    http.headers["Authorization"] = "Bearer " + token(sb)
    return http


def create(sb: Sandbox, http: requests.Session, **body: Any) -> str:
    body.setdefault("filter", {"createdAt": WINDOW})
    answer = http.post(sb.base_url + EXPORT + "/create.json", json=body, timeout=5).json()
    assert answer["success"], answer
    return answer["result"][0]["exportId"]


def wait_done(sb: Sandbox, http: requests.Session, export_id: str) -> dict[str, Any]:
    for _ in range(200):
        job = http.get(f"{sb.base_url}{EXPORT}/{export_id}/status.json", timeout=5).json()
        if job["result"][0]["status"] in ("Completed", "Failed"):
            return job["result"][0]
        time.sleep(0.02)
    raise AssertionError("job never finished")


def parse_row(row: dict[str, str], types: dict[int, dict[str, Any]]) -> dict[str, Any]:
    def nullable(text: str) -> str | None:
        return None if text == "null" else text

    type_id = int(row["activityTypeId"])
    primary_id: str | int | None = nullable(row["primaryAttributeValueId"])
    primary_type = types[type_id].get("primaryAttribute", {}).get("dataType")
    if primary_id is not None and primary_type == "integer":
        primary_id = int(primary_id)
    campaign = nullable(row["campaignId"])
    return {
        "marketoGUID": row["marketoGUID"], "leadId": int(row["leadId"]),
        "activityDate": row["activityDate"], "activityTypeId": type_id,
        "campaignId": None if campaign is None else int(campaign),
        "primaryAttributeValueId": primary_id,
        "primaryAttributeValue": nullable(row["primaryAttributeValue"]),
        "attributes": json.loads(row["Secondary Attributes"]),
        "actionResult": row["actionResult"],
    }


def test_envelope_and_601_without_token(sandbox: Sandbox) -> None:
    answer = requests.get(sandbox.base_url + "/rest/v1/activities/types.json", timeout=5)
    assert answer.status_code == 200
    body = answer.json()
    assert body["success"] is False and body["requestId"]
    assert body["errors"][0]["code"] == "601"
    types = session(sandbox).get(sandbox.base_url + "/rest/v1/activities/types.json",
                                 timeout=5).json()
    assert types["success"] is True and types["result"] == sandbox.activity_types()


def test_bad_credentials_answer_401(sandbox: Sandbox) -> None:
    answer = requests.post(sandbox.base_url + "/identity/oauth/token", params={
        "grant_type": "client_credentials", "client_id": "x", "client_secret": "y"}, timeout=5)
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"


def test_full_job_cycle_matches_expected(sandbox: Sandbox) -> None:
    http = session(sandbox)
    export_id = create(sandbox, http, format="CSV", fields=ALL_FIELDS,
                       columnHeaderNames={"attributes": "Secondary Attributes"})
    url = f"{sandbox.base_url}{EXPORT}/{export_id}"
    missing = http.get(url + "/file.json", timeout=5)
    assert missing.status_code == 404 and missing.text == "File not found"
    assert http.post(url + "/enqueue.json", timeout=5).json()["result"][0]["status"] == "Queued"
    job = wait_done(sandbox, http, export_id)
    assert job["status"] == "Completed"
    body = http.get(url + "/file.json", timeout=5).content
    assert "sha256:" + hashlib.sha256(body).hexdigest() == job["fileChecksum"]
    assert len(body) == job["fileSize"]
    reader = csv.DictReader(io.StringIO(body.decode("utf-8"), newline=""))
    assert reader.fieldnames is not None and "Secondary Attributes" in reader.fieldnames
    types = {t["id"]: t for t in sandbox.activity_types()}
    got = [parse_row(row, types) for row in reader]
    expected = sandbox.expected(WINDOW["startAt"], WINDOW["endAt"])
    assert job["numberOfRecords"] == len(expected) == len(got)
    key = lambda a: a["marketoGUID"]  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)
    assert got != expected  # rows are shuffled, not in date order


def test_range_download_answers_206(sandbox: Sandbox) -> None:
    http = session(sandbox)
    export_id = create(sandbox, http)
    url = f"{sandbox.base_url}{EXPORT}/{export_id}"
    http.post(url + "/enqueue.json", timeout=5)
    wait_done(sandbox, http, export_id)
    whole = http.get(url + "/file.json", timeout=5).content
    part = http.get(url + "/file.json", headers={"Range": "bytes=10-99"}, timeout=5)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 10-99/{len(whole)}"
    assert part.content == whole[10:100]
    tail = http.get(url + "/file.json", headers={"Range": "bytes=100-"}, timeout=5)
    assert tail.status_code == 206 and tail.content == whole[100:]


def test_queue_limit_answers_1029(sandbox: Sandbox) -> None:
    http = session(sandbox)
    sandbox.set_faults(stuck_jobs=10)
    for _ in range(10):
        export_id = create(sandbox, http)
        assert http.post(f"{sandbox.base_url}{EXPORT}/{export_id}/enqueue.json",
                         timeout=5).json()["success"]
    export_id = create(sandbox, http)
    answer = http.post(f"{sandbox.base_url}{EXPORT}/{export_id}/enqueue.json", timeout=5)
    assert answer.json()["errors"][0] == {"code": "1029", "message": "Too many jobs in queue"}
    assert sandbox.stats()["max_queued_or_processing"] == 10


def test_rate_limit_answers_606() -> None:
    with Sandbox(rate_limit_calls=5, rate_limit_window=20.0) as sb:
        http = session(sb)
        codes = []
        for _ in range(7):
            body = http.get(sb.base_url + "/rest/v1/activities/types.json", timeout=5).json()
            codes.append(body["errors"][0]["code"] if not body["success"] else "ok")
        assert codes == ["ok"] * 5 + ["606", "606"]
        assert sb.stats()["refused"] == {"606": 2}


def test_invalid_create_answers_1003(sandbox: Sandbox) -> None:
    http = session(sandbox)
    bad = [
        {"filter": {"createdAt": {"startAt": "2024-01-01T00:00:00.000Z",
                                  "endAt": "2024-01-02T00:00:00Z"}}},
        {"filter": {"createdAt": {"startAt": "2024-01-01T00:00:00Z",
                                  "endAt": "2024-02-02T00:00:00Z"}}},
        {"filter": {"createdAt": WINDOW, "activityTypeIds": [1, 37]}},
        {"fields": ["marketoGUID", "nope"], "filter": {"createdAt": WINDOW}},
    ]
    for body in bad:
        answer = http.post(sandbox.base_url + EXPORT + "/create.json", json=body,
                           timeout=5).json()
        assert answer["errors"][0]["code"] == "1003", body


def test_same_seed_same_data() -> None:
    first = Sandbox(seed=11).expected("2024-03-01T00:00:00Z", "2024-03-02T00:00:00Z")
    second = Sandbox(seed=11).expected("2024-03-01T00:00:00Z", "2024-03-02T00:00:00Z")
    assert first == second and first


def test_dirty_rows_cover_every_kind(sandbox: Sandbox) -> None:
    http = session(sandbox)
    sandbox.set_faults(dirty_rows=True)
    export_id = create(sandbox, http, fields=ALL_FIELDS)
    http.post(f"{sandbox.base_url}{EXPORT}/{export_id}/enqueue.json", timeout=5)
    job = wait_done(sandbox, http, export_id)
    body = http.get(f"{sandbox.base_url}{EXPORT}/{export_id}/file.json", timeout=5).content
    assert job["numberOfRecords"] >= 190
    assert "sha256:" + hashlib.sha256(body).hexdigest() == job["fileChecksum"]
    kinds = set(sandbox.dirty_guids().values())
    assert kinds == {"nul", "stray_cr", "unescaped_quote", "invalid_utf8", "broken_json",
                     "short_row"}
    assert b"\x00" in body and b"\xff\xfe" in body


def test_reset_fault_closes_connection(sandbox: Sandbox) -> None:
    http = session(sandbox)
    sandbox.set_faults(reset_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        http.get(sandbox.base_url + "/rest/v1/activities/types.json", timeout=5)
    sandbox.clear_faults()
    answer = http.get(sandbox.base_url + "/rest/v1/activities/types.json", timeout=5)
    assert answer.json()["success"] is True


# ---- Get Lead Activities, Merge Leads, live data -------------------------------------

ACTIVITIES = "/rest/v1/activities.json"


def paging_token(sb: Sandbox, http: requests.Session, since: str) -> str:
    answer = http.get(sb.base_url + "/rest/v1/activities/pagingtoken.json",
                      params={"sinceDatetime": since}, timeout=5).json()
    assert answer["success"], answer
    return str(answer["nextPageToken"])


def read_all(sb: Sandbox, http: requests.Session, token: str, type_ids: str,
             batch: int = 300) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every activity from `token` to the present, and the pages' envelopes."""
    rows: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    while True:
        page = http.get(sb.base_url + ACTIVITIES, params={
            "nextPageToken": token, "activityTypeIds": type_ids, "batchSize": str(batch)},
            timeout=5).json()
        assert page["success"], page
        pages.append(page)
        rows += page.get("result", [])
        token = page["nextPageToken"]
        if not page["moreResult"]:
            return rows, pages


def test_rest_pages_walk_every_type_and_match_expected(sandbox: Sandbox) -> None:
    http = session(sandbox)
    since = "2024-06-27T00:00:00Z"
    rows, pages = read_all(sandbox, http, paging_token(sandbox, http, since), "1,32,10", 40)
    expected = sandbox.expected_rest(since, type_ids=[1, 32, 10])
    assert rows == expected and expected
    every_type = sandbox.expected_rest(since)
    assert len(pages) == -(-len(every_type) // 40)  # 40 of all types a call, to the present
    assert any(0 < len(page.get("result", [])) < 40 for page in pages[:-1])
    merges, merge_pages = read_all(sandbox, http, paging_token(sandbox, http, since), "32", 10)
    assert merges == sandbox.expected_rest(since, type_ids=[32]) and merges
    assert any("result" not in page and page["moreResult"] for page in merge_pages)
    assert len(merge_pages) == -(-len(every_type) // 10)
    calls = len(pages) + len(merge_pages)
    assert sandbox.call_count("activities") == sandbox.call_count("activities", True) == calls
    assert {row["activityTypeId"] for row in every_type} >= {1, 32, 10}
    assert 37 not in {row["activityTypeId"] for row in every_type}
    dates = [row["activityDate"] for row in every_type]
    assert dates == sorted(dates) and dates[0] >= since


def test_rest_activity_carries_the_bulk_file_values() -> None:
    with Sandbox(seed=3, job_latency=0.05, activities_per_day=96,
                 data_end="2024-01-06T00:00:00Z") as box:
        rest_matches_bulk(box)


def rest_matches_bulk(sandbox: Sandbox) -> None:
    http = session(sandbox)
    export_id = create(sandbox, http, fields=ALL_FIELDS,
                       columnHeaderNames={"attributes": "Secondary Attributes"})
    http.post(f"{sandbox.base_url}{EXPORT}/{export_id}/enqueue.json", timeout=5)
    assert wait_done(sandbox, http, export_id)["status"] == "Completed"
    body = http.get(f"{sandbox.base_url}{EXPORT}/{export_id}/file.json", timeout=5).content
    types = {t["id"]: t for t in sandbox.activity_types()}
    bulk = {row["marketoGUID"]: parse_row(row, types)
            for row in csv.DictReader(io.StringIO(body.decode("utf-8"), newline=""))}
    ids = ",".join(str(t) for t in sorted(types) if t != 37)
    rest, groups = [], [ids.split(",")[i:i + 10] for i in range(0, len(types) - 1, 10)]
    for group in groups:
        token = paging_token(sandbox, http, WINDOW["startAt"])
        rows, _ = read_all(sandbox, http, token, ",".join(group))
        rest += [row for row in rows if row["activityDate"] <= WINDOW["endAt"]]
    assert {row["marketoGUID"] for row in rest} == set(bulk)
    seen_absent = seen_null = False
    for row in rest:
        record = bulk[row["marketoGUID"]]
        assert row["id"] == int(row["marketoGUID"]) and "actionResult" not in row
        assert {a["name"]: a["value"] for a in row.get("attributes", [])} == \
            record["attributes"]
        for name in ("leadId", "activityDate", "activityTypeId", "primaryAttributeValueId",
                     "primaryAttributeValue"):
            assert row[name] == record[name], name
        assert row.get("campaignId") == record["campaignId"]
        seen_absent |= "campaignId" not in row
        seen_null |= "campaignId" in row and row["campaignId"] is None
    assert seen_absent and seen_null


def test_rest_refuses_bad_type_ids_and_batch_size(sandbox: Sandbox) -> None:
    http = session(sandbox)
    token = paging_token(sandbox, http, "2024-01-02T00:00:00Z")
    bad: list[dict[str, str]] = [
        {}, {"activityTypeIds": ""}, {"activityTypeIds": ",".join(map(str, range(1, 12)))},
        {"activityTypeIds": "1,x"}, {"activityTypeIds": "1", "batchSize": "301"},
        {"activityTypeIds": "1", "nextPageToken": "not-a-token"}]
    for params in bad:
        answer = http.get(sandbox.base_url + ACTIVITIES,
                          params={"nextPageToken": token, **params}, timeout=5)
        assert answer.status_code == 200
        assert answer.json()["errors"][0]["code"] == "1003", params
    ten = http.get(sandbox.base_url + ACTIVITIES, params={
        "nextPageToken": token, "activityTypeIds": ",".join(map(str, range(1, 11)))},
        timeout=5).json()
    assert ten["success"] and ten["moreResult"] is True


def test_one_token_for_both_endpoints_from_since_inclusive(sandbox: Sandbox) -> None:
    http = session(sandbox)
    first = sandbox.expected_rest("2024-01-02T00:00:00Z")[5]
    since = first["activityDate"]
    rows, _ = read_all(sandbox, http, paging_token(sandbox, http, since),
                       str(first["activityTypeId"]))
    assert rows[0]["activityDate"] == since  # inclusive of the second
    token = paging_token(sandbox, http, "2024-03-01T00:00:00Z")
    deleted = http.get(sandbox.base_url + "/rest/v1/activities/deletedleads.json",
                       params={"nextPageToken": token}, timeout=5).json()
    assert deleted["result"] == sandbox.expected_deleted_leads("2024-03-01T00:00:00Z")[:300]
    page = http.get(sandbox.base_url + ACTIVITIES, params={
        "nextPageToken": token, "activityTypeIds": "1", "batchSize": "200"}, timeout=5).json()
    walked = sandbox.expected_rest("2024-03-01T00:00:00Z")[:200]
    middle = http.get(sandbox.base_url + "/rest/v1/activities/deletedleads.json",
                      params={"nextPageToken": page["nextPageToken"]}, timeout=5).json()
    after = sandbox.expected_rest("2024-03-01T00:00:00Z")[200]["activityDate"]
    assert middle["result"] == sandbox.expected_deleted_leads(after)[:300]
    assert walked[-1]["activityDate"] <= after


def test_faults_and_limits_reach_the_rest_route() -> None:
    with Sandbox(seed=3, rate_limit_calls=6, rate_limit_window=20.0) as sb:
        http = session(sb)
        token = paging_token(sb, http, "2024-01-02T00:00:00Z")
        params = {"nextPageToken": token, "activityTypeIds": "1,6"}
        sb.set_faults(routes=["activities"], error_rate={"602": 1.0})
        assert http.get(sb.base_url + ACTIVITIES, params=params,
                        timeout=5).json()["errors"][0]["code"] == "602"
        http = session(sb)  # the 602 revoked the token
        sb.set_faults(error_rate={}, http_5xx_rate=1.0)
        assert http.get(sb.base_url + ACTIVITIES, params=params,
                        timeout=5).status_code in (502, 503)
        assert http.get(sb.base_url + "/rest/v1/activities/types.json",
                        timeout=5).json()["success"]  # another route: untouched
        sb.clear_faults()
        codes = [http.get(sb.base_url + ACTIVITIES, params=params, timeout=5).json()
                 .get("errors", [{"code": "ok"}])[0]["code"] for _ in range(3)]
        assert codes == ["ok", "ok", "606"]  # 6 calls in 20 s, the pagingtoken one too
        assert sb.call_count("activities") == 5
        assert sb.call_count("activities", admitted=True) == 4
        with pytest.raises(ValueError):
            sb.set_faults(routes=["nope"])


def test_merge_leads_are_a_series_of_their_own() -> None:
    # The activities of other types are those of the sandbox before Merge Leads existed
    # (fingerprint taken from that version), so no existing expectation moved.
    box = Sandbox()
    rows = box.expected("2024-03-01T00:00:00Z", "2024-03-04T00:00:00Z")
    others = sorted((a for a in rows if a["activityTypeId"] != 32),
                    key=lambda a: a["marketoGUID"])
    digest = hashlib.sha256(json.dumps(others, sort_keys=True).encode()).hexdigest()
    assert (len(others), digest) == (
        145, "3e2d67694d2eb379035be8c329a7b45f3e24a1039afdaa5fd29e1d012db0b08e")
    merges = [a for a in rows if a["activityTypeId"] == 32]
    assert merges and [a["activityDate"] for a in rows] == sorted(a["activityDate"]
                                                                  for a in rows)
    merge_type = next(t for t in box.activity_types() if t["id"] == 32)
    assert merge_type["name"] == "Merge Leads"
    assert [a["name"] for a in merge_type["attributes"]] == [
        "Merge IDs", "Merge Source", "Merged in Sales", "Master Updated"]
    pairs = box.expected_merged_leads("2024-03-01T00:00:00Z", "2024-03-04T00:00:00Z")
    for merge in merges:
        mine = [p for p in pairs if p["marketoGUID"] == merge["marketoGUID"]]
        text = merge["attributes"]["Merge IDs"]
        assert text == "[" + ",".join(str(p["mergedLeadId"]) for p in mine) + "]"
        assert all(p["leadId"] == merge["leadId"] for p in mine)


@pytest.mark.parametrize(("style", "pattern"), [
    ("brackets", r"\[\d+(,\d+)*\]"), ("plain", r"\d+(,\d+)*"), ("spaced", r"\[\d+(, \d+)*\]"),
])
def test_merge_ids_written_in_each_style(style: str, pattern: str) -> None:
    box = Sandbox(merge_ids=style)
    texts = [a["attributes"]["Merge IDs"] for a in box.expected(
        "2024-01-01T00:00:00Z", "2024-01-20T00:00:00Z", type_ids=[32])]
    assert texts and all(re.fullmatch(pattern, text) for text in texts)
    assert any("," in text for text in texts) and any("," not in text for text in texts)


def test_bad_merge_ids_reach_the_file_and_make_no_pairs(sandbox: Sandbox) -> None:
    with Sandbox(seed=3, job_latency=0.05, merge_ids="mixed", bad_merge_ids_every=3) as sb:
        http = session(sb)
        window = {"startAt": "2024-01-01T00:00:00Z", "endAt": "2024-01-10T00:00:00Z"}
        export_id = create(sb, http, filter={"createdAt": window, "activityTypeIds": [32]})
        http.post(f"{sb.base_url}{EXPORT}/{export_id}/enqueue.json", timeout=5)
        assert wait_done(sb, http, export_id)["status"] == "Completed"
        body = http.get(f"{sb.base_url}{EXPORT}/{export_id}/file.json", timeout=5).content
        rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))
        texts = {row["marketoGUID"]: json.loads(row["attributes"])["Merge IDs"]
                 for row in rows}
        bad = {guid for guid, text in texts.items()
               if not re.fullmatch(r"\[?\d+(, ?\d+)*\]?", text)}
        assert {texts[guid] for guid in bad} >= {"abc", "[1,x]"}
        pairs = sb.expected_merged_leads(window["startAt"], window["endAt"])
        assert {p["marketoGUID"] for p in pairs} == set(texts) - bad
        assert len(rows) == len(sb.expected(window["startAt"], window["endAt"], [32]))


def test_live_data_run_up_to_the_clock() -> None:
    now = datetime.now(timezone.utc)
    start = (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with Sandbox(seed=3, data_start=start, data_end="now", activities_per_day=86400,
                 job_latency=0.05) as sb:
        http = session(sb)
        rows, pages = read_all(sb, http, paging_token(sb, http, start), "1,6,10,12")
        floor = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert rows and rows[-1]["activityDate"] < floor
        seen = {row["marketoGUID"] for row in rows}
        token = pages[-1]["nextPageToken"]
        later: list[dict[str, Any]] = []
        while not later:  # one activity a second: the next pages bring the new ones
            time.sleep(1)
            more, pages = read_all(sb, http, token, ",".join(
                str(t["id"]) for t in sb.activity_types()[:10]))
            token = pages[-1]["nextPageToken"]
            later += more
        assert not seen & {row["marketoGUID"] for row in later}
        end = (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        export_id = create(sb, http, filter={"createdAt": {"startAt": start, "endAt": end}})
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        http.post(f"{sb.base_url}{EXPORT}/{export_id}/enqueue.json", timeout=5)
        assert wait_done(sb, http, export_id)["status"] == "Completed"
        body = http.get(f"{sb.base_url}{EXPORT}/{export_id}/file.json", timeout=5).content
        dates = [row["activityDate"] for row in
                 csv.DictReader(io.StringIO(body.decode("utf-8"), newline=""))]
        assert dates and max(dates) < created


def test_cli_serves_live_data_and_a_recent_start_date(tmp_path: Path) -> None:
    config_path = tmp_path / "config.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tap_marketo_activities.sandbox", "--config-out",
         str(config_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("sandbox listening on ")
        config = json.loads(config_path.read_text())
        now = datetime.now(timezone.utc)
        start = datetime.fromisoformat(config["start_date"].replace("Z", "+00:00"))
        # Under the day a first run may read through Get Lead Activities with no cost learnt.
        assert timedelta(hours=21) < now - start <= timedelta(hours=23)
        http = requests.Session()
        http.headers["Authorization"] = "Bearer " + requests.get(
            config["base_url"] + "/identity/oauth/token", params={
                "grant_type": "client_credentials", "client_id": config["client_id"],
                "client_secret": config["client_secret"]}, timeout=5).json()["access_token"]
        since = (now - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        token = http.get(config["base_url"] + "/rest/v1/activities/pagingtoken.json",
                         params={"sinceDatetime": since}, timeout=5).json()["nextPageToken"]
        page = http.get(config["base_url"] + ACTIVITIES, params={
            "nextPageToken": token, "activityTypeIds": ",".join(
                str(t) for t in (1, 2, 3, 6, 7, 8, 9, 10, 11, 12))}, timeout=5).json()
        ours = [row for row in page.get("result", []) if row["activityDate"] >= since]
        assert page["moreResult"] is False and ours  # ten minutes of live data: some rows
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(("args", "says"), [
    (["--data-end", "2024-01-11T00:00:00Z"], "--data-end 2024-01-11T00:00:00Z is not after "
                                             "--data-start "),  # the default: 28 days ago
    (["--data-start", "2024-01-11T00:00:00Z", "--data-end", "2024-01-01T00:00:00Z"],
     "is not after --data-start 2024-01-11T00:00:00Z"),
    (["--data-start", "2024-01-01", "--data-end", "2024-01-11T00:00:00Z"],
     "must be ISO-8601 date-times"),
])
def test_cli_refuses_dates_that_give_no_data_with_one_line(args: list[str], says: str) -> None:
    done = subprocess.run([sys.executable, "-m", "tap_marketo_activities.sandbox", *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and says in done.stderr, done.stderr


def test_the_purge_deletes_each_type_after_its_retention_at_the_clock() -> None:
    start, end = "2024-01-01T00:00:00Z", "2024-07-19T00:00:00Z"
    box = Sandbox(data_start=start, data_end=end, purge=True)

    def oldest(type_id: int) -> str:
        rows = box.expected(start, end, [type_id])
        assert [r["marketoGUID"] for r in box.expected_rest(start, end, [type_id])] == \
            [r["marketoGUID"] for r in rows if r["activityDate"] < end]
        return min(r["activityDate"] for r in rows)

    assert oldest(1) >= "2024-04-20" > oldest(2)  # Visit Webpage 90 days, Fill Out Form 25 months
    assert oldest(12) < "2024-01-02"  # New Lead: forever
    assert min(d["activityDate"] for d in box.expected_deleted_leads(start)) >= "2024-07-05"
    box.set_clock("2024-07-10T00:00:00Z")  # Marketo's time: the edge moves with it
    assert "2024-04-11" <= oldest(1) < "2024-04-12"
    assert Sandbox(data_start=start, data_end=end).expected(start, end, [1])[0][
        "activityDate"] < "2024-01-02"  # the purge off: everything
