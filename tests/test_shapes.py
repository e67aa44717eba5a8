"""Export files in every shape Marketo documents (issue 19): offset timestamps, attributes as
a {name, value} list, spaces in the header. Each is read into the very records the canonical
shape gives: on small files here, and through the sandbox and the tap process at the end."""

from __future__ import annotations

import codecs
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import END, START, TapRun, config_for, run_tap

from tap_marketo_activities.instants import isoformat, parse_datetime, utc_text
from tap_marketo_activities.records import (
    INVALID_UTF8,
    FileRejected,
    Problems,
    RecordBuilder,
    attributes_object,
    read_records,
)
from tap_marketo_activities.sandbox import Sandbox
from tap_marketo_activities.sandbox.limits import FileShape
from tap_marketo_activities.schema import activity_schema

UTC = dt.timezone.utc
SESSION = {"id": 100001, "name": "Attend Session",
           "primaryAttribute": {"name": "Session ID", "dataType": "integer"},
           "attributes": [{"name": "Checked In At", "dataType": "datetime"},
                          {"name": "Seat", "dataType": "integer"},
                          {"name": "Room", "dataType": "string"}]}
HEADER = ("marketoGUID,leadId,activityDate,activityTypeId,campaignId,primaryAttributeValueId,"
          "primaryAttributeValue,attributes")
ATTRIBUTES = {"Checked In At": "2024-03-01T09:30:00Z", "Seat": 12, "Room": "B, 2"}


def _quoted(value: Any) -> str:
    return '"' + json.dumps(value).replace('"', '""') + '"'


def _read(tmp_path: Path, header: str, *rows: str) -> tuple[list[dict[str, Any]], Problems]:
    path = tmp_path / "export.csv"
    path.write_bytes(("\n".join([header, *rows]) + "\n").encode())
    problems = Problems("test")
    builders = {100001: RecordBuilder("activities_attend_session", activity_schema(SESSION),
                                      None)}
    return [r for _, r in read_records(path, "CSV", builders, problems)], problems


def _row(date: str, attributes: Any = ATTRIBUTES) -> str:
    return f"9,5,{date},100001,7,3,Keynote,{_quoted(attributes)}"


def _canonical(tmp_path: Path) -> dict[str, Any]:
    records, problems = _read(tmp_path, HEADER, _row("2024-03-01T09:00:00Z"))
    assert not problems.counts
    return records[0]


@pytest.mark.parametrize(("given", "utc"), [
    ("2024-03-01T09:00:00Z", "2024-03-01T09:00:00Z"),
    ("2024-03-01T09:00:00+0000", "2024-03-01T09:00:00Z"),
    ("2024-03-01T09:00:00+00:00", "2024-03-01T09:00:00Z"),
    ("2024-03-01T04:00:00-0500", "2024-03-01T09:00:00Z"),
    ("2024-03-01T14:30:00+05:30", "2024-03-01T09:00:00Z"),
    ("2024-03-01T09:00:00.250z", "2024-03-01T09:00:00Z"),
    ("2024-03-01T09:00:00", "2024-03-01T09:00:00Z"),
    ("2024-02-29T23:00:00-1000", "2024-03-01T09:00:00Z"),
])
def test_every_offset_form_is_one_utc_form(given: str, utc: str) -> None:
    assert utc_text(given) == utc
    assert isoformat(parse_datetime(given)) == utc


@pytest.mark.parametrize("bad", ["", "null", "yesterday", "2024-13-01T00:00:00Z",
                                 "2024-03-01T09:00:00+0x00"])
def test_what_is_no_datetime_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        utc_text(bad)


def test_isoformat_pads_early_years() -> None:
    assert isoformat(dt.datetime(999, 1, 2, 3, 4, 5, 678, tzinfo=UTC)) == "0999-01-02T03:04:05Z"


def test_offset_dates_give_the_canonical_records(tmp_path: Path) -> None:
    canonical = _canonical(tmp_path)
    for date in ("2024-03-01T09:00:00+0000", "2024-03-01T09:00:00+00:00",
                 "2024-03-01T04:00:00-0500"):
        records, problems = _read(tmp_path, HEADER, _row(date))
        assert records == [canonical] and not problems.counts


def test_datetime_attribute_columns_come_out_in_utc(tmp_path: Path) -> None:
    attributes = {**ATTRIBUTES, "Checked In At": "2024-03-01T04:30:00-0500"}
    records, _ = _read(tmp_path, HEADER, _row("2024-03-01T09:00:00Z", attributes))
    assert records[0]["checked_in_at"] == "2024-03-01T09:30:00Z"
    assert records[0]["attributes"] == attributes  # the raw object is kept whole


def test_an_activity_date_that_is_no_datetime_is_kept_and_reported(tmp_path: Path) -> None:
    records, problems = _read(tmp_path, HEADER, _row("last tuesday"))
    assert records[0]["activityDate"] == "last tuesday"
    assert list(problems.counts.values()) == [1]


def test_attributes_as_a_name_value_list_give_the_canonical_records(tmp_path: Path) -> None:
    canonical = _canonical(tmp_path)
    pairs = [{"name": name, "value": value} for name, value in ATTRIBUTES.items()]
    records, problems = _read(tmp_path, HEADER, _row("2024-03-01T09:00:00Z", pairs))
    assert records == [canonical] and not problems.counts


def test_a_list_that_is_not_name_value_pairs_is_kept_unparsed(tmp_path: Path) -> None:
    records, problems = _read(tmp_path, HEADER, _row("2024-03-01T09:00:00Z", [1, 2]))
    assert records[0]["attributes"] == {"_unparsed": [1, 2]}
    assert records[0]["seat"] is None and sum(problems.counts.values()) == 1


def test_the_rest_path_converts_attributes_with_the_same_function(tmp_path: Path) -> None:
    canonical = _canonical(tmp_path)
    item: dict[str, Any] = {
        "marketoGUID": "9", "leadId": 5, "activityDate": "2024-03-01T09:00:00Z",
        "activityTypeId": 100001, "campaignId": 7, "primaryAttributeValueId": 3,
        "primaryAttributeValue": "Keynote",
        "attributes": [{"name": n, "value": v} for n, v in ATTRIBUTES.items()]}
    builder = RecordBuilder("activities_attend_session", activity_schema(SESSION), None)
    record_of = builder.bind_rest(Problems("rest"))
    assert record_of(item, 1) == {**canonical, "actionResult": None}
    assert attributes_object(item["attributes"]) == ATTRIBUTES
    assert attributes_object([]) == {}
    assert attributes_object([{"value": 1}]) is None


REST_ITEM: dict[str, Any] = {
    "marketoGUID": "9", "leadId": 5, "activityDate": "2024-03-01T09:00:00Z",
    "activityTypeId": 100001, "campaignId": 7, "primaryAttributeValueId": 3,
    "primaryAttributeValue": "Keynote",
    "attributes": [{"name": n, "value": v} for n, v in ATTRIBUTES.items()]}


@pytest.mark.parametrize(("change", "row"), [
    # (what the REST item says instead, the export row that says the same)
    ({}, _row("2024-03-01T09:00:00Z")),
    ({"leadId": "5", "campaignId": "7", "primaryAttributeValueId": "3"},
     _row("2024-03-01T09:00:00Z")),
    ({"campaignId": None, "primaryAttributeValue": None},
     "9,5,2024-03-01T09:00:00Z,100001,null,3,null," + _quoted(ATTRIBUTES)),
    ({"activityDate": "2024-03-01T04:00:00-0500"}, _row("2024-03-01T04:00:00-0500")),
    ({"attributes": ATTRIBUTES}, _row("2024-03-01T09:00:00Z")),
    ({"attributes": [1, 2]}, _row("2024-03-01T09:00:00Z", [1, 2])),
    ({"leadId": "five"}, "9,five,2024-03-01T09:00:00Z,100001,7,3,Keynote,"
     + _quoted(ATTRIBUTES)),
], ids=["as-is", "numbers-as-text", "nulls", "offset", "attributes-object", "not-pairs",
        "uncastable"])
def test_a_rest_item_and_its_export_row_are_the_same_record(
        tmp_path: Path, change: dict[str, Any], row: str) -> None:
    records, file_problems = _read(tmp_path, HEADER, row)
    builder = RecordBuilder("activities_attend_session", activity_schema(SESSION), None)
    problems = Problems("rest")
    record = builder.bind_rest(problems)({**REST_ITEM, **change}, 1)
    assert record == {**records[0], "actionResult": None}
    assert problems.counts == file_problems.counts


def test_header_names_are_matched_after_trimming_spaces(tmp_path: Path) -> None:
    canonical = _canonical(tmp_path)
    spaced = ", ".join(HEADER.split(","))
    records, problems = _read(tmp_path, spaced, _row("2024-03-01T09:00:00Z"))
    assert records == [canonical] and not problems.counts


def test_an_unknown_column_is_still_refused_when_spaced(tmp_path: Path) -> None:
    with pytest.raises(FileRejected, match=re.escape("does not export ('campaign'")):
        _read(tmp_path, HEADER.replace(",campaignId", ", campaign "), _row("2024-03-01T09:00:00Z"))


def test_bad_bytes_are_blamed_on_their_own_row_and_file(tmp_path: Path) -> None:
    # A genuine U+FFFD (valid UTF-8) is no decoding problem; bad bytes in one file are
    # counted for that file only, on the row that holds them.
    good = tmp_path / "good"
    good.mkdir()
    clean, clean_problems = _read(good, HEADER, _row("2024-03-01T09:00:00Z",
                                                     {**ATTRIBUTES, "Room": "\ufffd"}))
    path = tmp_path / "bad.csv"
    path.write_bytes(f"{HEADER}\n{_row('2024-03-01T09:00:00Z')}\n".encode()
                     + _row("2024-03-01T09:00:00Z").replace("Keynote", "Key\xffnote")
                     .encode("latin-1") + b"\n")
    problems = Problems("bad")
    builders = {100001: RecordBuilder("a", activity_schema(SESSION), None)}
    records = [r for _, r in read_records(path, "CSV", builders, problems)]
    assert clean[0]["room"] == "\ufffd" and not clean_problems.counts
    assert [r["primaryAttributeValue"] for r in records] == ["Keynote", "Key\ufffdnote"]
    assert problems.counts == {INVALID_UTF8: 1}


def test_reading_leaves_no_codec_behind() -> None:
    with pytest.raises(LookupError):
        codecs.lookup_error("marketo_count_replace")


# ---- through the sandbox and the tap process ------------------------------------------

UTC_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
SHAPES = {
    "offset +0000": FileShape(date_offset="+0000"),
    "offset +00:00": FileShape(date_offset="+00:00"),
    "offset -0500": FileShape(date_offset="-0500"),
    "attributes list": FileShape(attributes_as_list=True),
    "spaced header": FileShape(spaced_header=True),
    "all three": FileShape(date_offset="+0000", attributes_as_list=True, spaced_header=True),
}


def _delivered(run: TapRun) -> dict[str, dict[str, dict[str, Any]]]:
    return {stream: {r["marketoGUID"]: r for r in rows} for stream, rows in run.records.items()}


def _bookmarks(run: TapRun) -> dict[str, Any]:
    return {stream: value.get("replication_key_value")
            for stream, value in run.last_state["bookmarks"].items()}


def _read_problems(run: TapRun) -> set[str]:
    """What the file reader warned of (a kind, or a field that could not be cast), without
    the file, row and value it named: rows come in another order in every file."""
    return {re.sub(r".*, row \d+: ", "", line).split(": ")[0] for line in run.stderr.splitlines()
            if "| WARNING" in line and "tap_marketo_activities.records" in line}


def _raw_files(raw: Path) -> list[str]:
    files = [path.read_text() for path in sorted(raw.iterdir()) if path.suffix != ".json"]
    assert files
    return files


@pytest.fixture(scope="module")
def canonical(tmp_path_factory: pytest.TempPathFactory) -> TapRun:
    """A run on files in Adobe's current shape: what every other shape must deliver."""
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        run = run_tap(tmp_path_factory.mktemp("canonical"), config_for(box))
    assert run.returncode == 0, run.stderr[-3000:]
    assert sum(len(rows) for rows in run.records.values()) > 1000
    return run


@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_each_file_shape_is_delivered_as_the_canonical_shape(
        fresh_sandbox: Sandbox, canonical: TapRun, shape: FileShape, tmp_path: Path) -> None:
    fresh_sandbox.set_faults(file_shape=shape)
    raw = tmp_path / "raw"
    run = run_tap(tmp_path, config_for(fresh_sandbox, raw_files_dir=str(raw)))
    assert run.returncode == 0, run.stderr[-3000:]
    for text in _raw_files(raw):  # the sandbox did write the shape
        header, first = text.split("\n")[:2]
        assert (", leadId" in header) == shape.spaced_header
        assert ('"[{""name"":' in text) == shape.attributes_as_list
        assert bool(re.search(r"T\d\d:\d\d:\d\d[+-]", first)) == bool(shape.date_offset)
    assert _delivered(run) == _delivered(canonical)
    dates = [r["activityDate"] for rows in run.records.values() for r in rows]
    assert dates and all(UTC_DATE.fullmatch(d) for d in dates)
    assert _bookmarks(run) == _bookmarks(canonical)
    assert all(UTC_DATE.fullmatch(v) for v in _bookmarks(run).values())
    assert _read_problems(run) == _read_problems(canonical)
