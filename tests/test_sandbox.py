"""Tests of the fake Marketo server itself, over loopback HTTP."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Iterator
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
