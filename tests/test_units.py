"""Pure functions: names, schemas, settings, windows, and the file parser on small files."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from pathlib import Path

import pytest

from tap_marketo_activities.export import JobSpec, spec_of_export
from tap_marketo_activities.records import (
    REPORTED_PER_KIND,
    UNASKED_TYPE,
    WRONG_WIDTH,
    FileRejected,
    Problems,
    RecordBuilder,
    check_whole,
    read_records,
)
from tap_marketo_activities.retention import FOREVER, Retention, months_before, retention_of
from tap_marketo_activities.scheduler import PlanRequest, grid_windows, plan_jobs
from tap_marketo_activities.schema import activity_schema, attribute_specs, stream_names
from tap_marketo_activities.settings import (
    CONFIG_SCHEMA,
    PrimaryFilter,
    SettingsError,
    normalize_base_url,
    parse_settings,
    unknown_settings,
)

UTC = dt.timezone.utc


def day(n: int) -> dt.datetime:
    return dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(days=n)


def test_stream_names_follow_the_type_names_and_lowest_id_keeps_a_clash() -> None:
    names = stream_names([
        {"id": 100003, "name": "Webinar Attended Zoom"},
        {"id": 1, "name": "Visit Webpage"},
        {"id": 104, "name": "Change Status in Progression"},
        {"id": 100002, "name": "Webinar Attended (Zoom)"},
    ])
    assert names == {
        1: "activities_visit_webpage",
        104: "activities_change_status_in_progression",
        100002: "activities_webinar_attended_zoom",
        100003: "activities_webinar_attended_zoom_100003",
    }


def test_schema_types_every_attribute_and_never_clashes_with_a_base_column() -> None:
    schema = activity_schema({
        "id": 5, "name": "Odd",
        "primaryAttribute": {"name": "Webpage ID", "dataType": "integer"},
        "attributes": [
            {"name": "Campaign Id", "dataType": "string"},
            {"name": "Attributes", "dataType": "string"},
            {"name": "Score", "dataType": "score"},
            {"name": "When", "dataType": "datetime"},
            {"name": "Where", "dataType": "geoPoint"},
        ],
    })
    props = schema["properties"]
    assert props["primaryAttributeValueId"]["type"] == ["integer", "null"]
    assert props["attribute_attributes"]["title"] == "Attributes"
    assert props["attributes"]["type"] == ["object", "null"]
    assert props["score"]["type"] == ["integer", "null"]
    assert props["when"]["format"] == "date-time"
    assert props["where"]["type"] == ["string", "null"]
    assert props["activityTypeId"]["enum"] == [5]
    assert {s.source for s in attribute_specs(schema)} == {
        "Campaign Id", "Attributes", "Score", "When", "Where"}


def test_a_type_without_primary_attribute_or_attributes_has_the_base_columns() -> None:
    props = activity_schema({"id": 12, "name": "New Lead"})["properties"]
    assert props["primaryAttributeValueId"]["type"] == ["string", "null"]
    assert "attributes" in props and len(props) == 9


@pytest.mark.parametrize("given", [
    "https://284-RPR-133.mktorest.com", "https://284-RPR-133.mktorest.com/",
    "https://284-RPR-133.mktorest.com/rest", "https://284-RPR-133.mktorest.com/rest/",
    "https://284-RPR-133.mktorest.com/identity", " https://284-RPR-133.mktorest.com/REST ",
])
def test_base_url_accepts_what_the_admin_screen_shows(given: str) -> None:
    assert normalize_base_url(given) == "https://284-RPR-133.mktorest.com"


def test_base_url_keeps_a_port() -> None:
    assert normalize_base_url("http://127.0.0.1:8123/") == "http://127.0.0.1:8123"


@pytest.mark.parametrize("bad", ["ftp://x.mktorest.com", "284-RPR-133.mktorest.com",
                                 "https://x.mktorest.com/rest/v1", "https://",
                                 "https://user:pw@x.mktorest.com", "https://x.mkto rest.com",
                                 "https://x.mktorest.com\\", "https://x_y!.mktorest.com",
                                 "https://x.mktorest.com:99999"])
def test_base_url_refuses_anything_else(bad: str) -> None:
    with pytest.raises(SettingsError, match="base_url"):
        normalize_base_url(bad)


GOOD = {"client_id": "a", "client_secret": "b", "base_url": "http://127.0.0.1:1",
        "start_date": "2024-01-01"}


@pytest.mark.parametrize(("change", "setting"), [
    ({"start_date": "yesterday"}, "start_date"),
    ({"end_date": "2023-01-01"}, "start_date"),
    ({"window_days": 0}, "window_days"),
    ({"window_days": 40}, "window_days"),
    ({"base_url": "mailto:x@y"}, "base_url"),
    ({"activity_type_ids": []}, "activity_type_ids"),
    ({"activity_type_ids": [-1]}, "activity_type_ids"),
    ({"activity_type_ids": [0, 1]}, "activity_type_ids"),
    ({"raw_files_dir": "/proc/no-such-place"}, "raw_files_dir"),
    ({"retention_months": 36}, "retention_months"),
])
def test_bad_settings_name_the_setting(change: dict, setting: str) -> None:
    with pytest.raises(SettingsError, match=setting):
        parse_settings({**GOOD, **change})


def test_raw_files_dir_is_created_and_proven_writable(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    assert parse_settings({**GOOD, "raw_files_dir": str(folder)}).raw_files_dir == folder
    assert folder.is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsError, match="raw_files_dir"):
        parse_settings({**GOOD, "raw_files_dir": str(tmp_path / "file" / "x")})


def test_an_unknown_setting_is_named_with_the_closest_known_one() -> None:
    config = {**GOOD, "windows_days": 3, "zzz": 1, "stream_maps": {}}
    schema = {"properties": {**CONFIG_SCHEMA["properties"], "stream_maps": {}}}
    assert unknown_settings(config, schema) == [("windows_days", "window_days"), ("zzz", None)]


def test_an_end_date_in_the_future_is_now() -> None:
    now = dt.datetime(2026, 11, 28, 12, tzinfo=UTC)
    settings = parse_settings({**GOOD, "end_date": "2030-01-01"}, now=now)
    assert settings.end == now


def test_an_earlier_run_s_job_serves_only_an_export_of_the_same_filter_and_headers() -> None:
    plain = JobSpec(day(0), day(1), (2,))
    filtered = JobSpec(day(0), day(1), (2,), primary_filter=PrimaryFilter("values", ("A.B",)))
    renamed = JobSpec(day(0), day(1), (2,), header_names=(("attributes", "Attrs"),))
    specs = (plain, filtered, renamed)
    for earlier in specs:
        export = {"exportId": "x", **earlier.key()}
        assert [spec_of_export(export, like) is not None for like in specs] == \
            [like is earlier for like in specs]
    assert spec_of_export({"exportId": "y", **plain.key()}, plain) == plain


def test_dates_without_offset_are_utc() -> None:
    settings = parse_settings({**GOOD, "start_date": "2024-01-01T05:00:00",
                               "end_date": "2024-02-01T00:00:00+02:00"})
    assert settings.start == dt.datetime(2024, 1, 1, 5, tzinfo=UTC)
    assert settings.end == dt.datetime(2024, 1, 31, 22, tzinfo=UTC)


def test_windows_neither_overlap_nor_leave_gaps_and_line_up_after_the_first() -> None:
    plans = grid_windows({"a": day(0), "b": day(10)}, day(70), dt.timedelta(days=31))
    assert plans["a"] == [(day(0), day(31)), (day(31), day(62)), (day(62), day(70))]
    assert plans["b"] == [(day(10), day(31)), (day(31), day(62)), (day(62), day(70))]
    for windows in plans.values():
        assert all(w[1] == n[0] for w, n in itertools.pairwise(windows))


def test_one_job_per_window_serves_every_stream_that_needs_it() -> None:
    jobs = plan_jobs({"a": day(0), "b": day(0), "c": day(40)}, end=day(93),
                     request=PlanRequest({"a": 1, "b": 2, "c": 3}, dt.timedelta(days=31)))
    assert [(j.spec.start, j.spec.end, j.spec.type_ids) for j in jobs] == [
        (day(0), day(31), (1, 2)),
        (day(31), day(62), (1, 2)),
        (day(40), day(62), (3,)),
        (day(62), day(93), (1, 2, 3)),
    ]


def test_a_stream_at_the_end_needs_no_job() -> None:
    assert plan_jobs({"a": day(5)}, end=day(5),
                     request=PlanRequest({"a": 1}, dt.timedelta(days=1))) == []


VISIT = {"id": 1, "name": "Visit Webpage",
         "primaryAttribute": {"name": "Webpage ID", "dataType": "integer"},
         "attributes": [{"name": "Personalized URL", "dataType": "boolean"},
                        {"name": "Webpage URL", "dataType": "string"},
                        {"name": "Score", "dataType": "integer"}]}


def _builders() -> dict[int, RecordBuilder]:
    builder = RecordBuilder("activities_visit_webpage", activity_schema(VISIT), None)
    return {1: builder}


def _read(tmp_path: Path, body: bytes) -> tuple[list[dict], Problems]:
    path = tmp_path / "export.csv"
    path.write_bytes(body)
    problems = Problems("test")
    records = [r for _, r in read_records(path, "CSV", _builders(), problems)]
    return records, problems


HEADER = (b"marketoGUID,leadId,activityDate,activityTypeId,campaignId,"
          b"primaryAttributeValueId,primaryAttributeValue,attributes\n")


def _attrs(value: dict) -> bytes:
    return b'"' + json.dumps(value).encode().replace(b'"', b'""') + b'"'


def test_values_come_out_exactly_and_typed(tmp_path: Path) -> None:
    hostile = 'a,b;c\t"q" \r\n\r line\n ü 漢 😀'
    attrs = {"Personalized URL": True, "Webpage URL": hostile, "Score": "7", "Extra": 1}
    body = HEADER + b'9,5,2024-01-01T00:00:00Z,1,null,42,"' + \
        hostile.replace('"', '""').encode() + b'",' + _attrs(attrs) + b"\n"
    records, problems = _read(tmp_path, body)
    assert records == [{
        "marketoGUID": "9", "leadId": 5, "activityDate": "2024-01-01T00:00:00Z",
        "activityTypeId": 1, "campaignId": None, "primaryAttributeValueId": 42,
        "primaryAttributeValue": hostile, "attributes": attrs,
        "personalized_url": True, "webpage_url": hostile, "score": 7,
    }]
    assert not problems.counts


def test_an_uncastable_value_leaves_the_column_null_and_is_counted(tmp_path: Path) -> None:
    body = HEADER + b"9,5,2024-01-01T00:00:00Z,1,7,x,p," + _attrs({"Score": "many"}) + b"\n"
    records, problems = _read(tmp_path, body)
    assert records[0]["score"] is None and records[0]["attributes"] == {"Score": "many"}
    assert records[0]["primaryAttributeValueId"] is None
    assert problems.counts["uncastable activities_visit_webpage.score"] == 1


def test_dirty_rows_are_kept_and_counted(tmp_path: Path) -> None:
    body = (HEADER
            + b"1,5,2024-01-01T00:00:00Z,1,7,3,stray\rCR,null\n"
            + b"2,5,2024-01-01T00:00:00Z,1,7,3,nul\x00byte,null\n"
            + b"3,5,2024-01-01T00:00:00Z,1,7,3,bad \xff utf8,null\n"
            + b'4,5,2024-01-01T00:00:00Z,1,7,3,p,"{""broken"n\n'
            + b"5,5,2024-01-01T00:00:00Z,1\n")
    records, problems = _read(tmp_path, body)
    assert [r["marketoGUID"] for r in records] == ["1", "2", "3", "4", "5"]
    assert records[0]["primaryAttributeValue"] == "stray\rCR"
    assert records[1]["primaryAttributeValue"] == "nul\x00byte"
    assert records[2]["primaryAttributeValue"] == "bad \ufffd utf8"
    assert set(records[3]["attributes"]) == {"_unparsed"}
    assert records[4]["campaignId"] is None
    assert set(problems.counts) == {
        "stray CR in an unquoted value (kept)", "NUL byte in a value (kept)",
        "invalid UTF-8 replaced by U+FFFD",
        "attributes is not valid JSON; kept as text under `_unparsed`", WRONG_WIDTH}


ROW = b"%d,5,2024-01-01T00:00:00Z,%d,7,3,p,null\n"


@pytest.mark.parametrize(("header", "says"), [
    (HEADER.replace(b"activityDate,", b""), "lacks the requested column(s) activityDate"),
    (HEADER.replace(b"campaignId", b"campaign"), "does not export ('campaign'"),
    (HEADER.replace(b"leadId", b"marketoGUID"), "names a column twice"),
])
def test_a_header_that_is_not_what_was_asked_is_refused(tmp_path: Path, header: bytes,
                                                        says: str) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(header + b"".join(ROW % (n, 1) for n in range(3)))
    fields = HEADER.decode().strip().split(",")
    with pytest.raises(FileRejected, match=re.escape(says)):
        list(read_records(path, "CSV", _builders(), Problems("test"), fields=fields))


@pytest.mark.parametrize("change", [b",extra\n", b"\n"])
def test_rows_that_never_fit_their_header_are_refused(tmp_path: Path, change: bytes) -> None:
    # A header with one column more (or rows with one cell more) than the rows have.
    rows = b"".join(ROW % (n, 1) for n in range(30))
    header = HEADER.replace(b"attributes\n", b"attributes,actionResult\n") \
        if change == b"\n" else HEADER
    body = header + (rows if change == b"\n" else rows.replace(b"null\n", b"null,x\n"))
    path = tmp_path / "export.csv"
    path.write_bytes(body)
    with pytest.raises(FileRejected, match="none of the first 20 rows"):
        next(read_records(path, "CSV", _builders(), Problems("test")))


def test_a_long_header_is_shown_short(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(b"x" * 100_000 + b"\n" + ROW % (1, 1))
    with pytest.raises(FileRejected) as refused:
        list(read_records(path, "CSV", _builders(), Problems("test")))
    assert len(str(refused.value)) < 400


def test_rows_of_types_not_asked_for_are_counted_and_reported_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [ROW % (n, 1 if n % 3 else 13 + n) for n in range(30)]
    records, problems = _read(tmp_path, HEADER + b"".join(rows))
    assert len(records) == 20
    assert problems.counts == {UNASKED_TYPE: 10}
    assert sum(UNASKED_TYPE in r.message for r in caplog.records) == 1


def test_rows_of_a_type_no_longer_needed_are_dropped_silently(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(HEADER + ROW % (1, 1) + ROW % (2, 13) + ROW % (3, 13))
    problems = Problems("test")
    records = list(read_records(path, "CSV", {**_builders(), 13: None}, problems))
    assert [r["marketoGUID"] for _, r in records] == ["1"]
    assert (problems.counts, problems.rows) == ({}, 3)
    assert caplog.records == []


def test_each_problem_kind_is_logged_a_few_times_then_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    short = b"".join(b"%d,5,2024-01-01T00:00:00Z,1,7\n" % n for n in range(40))
    _, problems = _read(tmp_path, HEADER + ROW % (99, 1) + short)
    assert problems.counts == {WRONG_WIDTH: 40}
    assert len(caplog.records) == REPORTED_PER_KIND


def test_a_file_with_fewer_rows_than_marketo_counted_is_not_whole(tmp_path: Path) -> None:
    _, problems = _read(tmp_path, HEADER + ROW % (1, 1) + b"\n" + ROW % (2, 1))
    check_whole(problems, 2)
    check_whole(problems, None)  # Marketo did not say: nothing to hold it against
    with pytest.raises(FileRejected, match="Marketo counted 3 records, the file holds 2"):
        check_whole(problems, 3)


def test_a_stray_cr_beside_a_quoted_newline_keeps_the_row_whole(tmp_path: Path) -> None:
    # The attributes cell spans two physical lines (JSON allows a newline between tokens).
    body = (HEADER + b'1,5,2024-01-01T00:00:00Z,1,7,3,pa\rge,"{""Webpage URL"":\n""a\\nb""}"\n'
            + b'2,5,2024-01-01T00:00:00Z,1,7,3,"two\nlines and a \r",null\n')
    records, problems = _read(tmp_path, body)
    assert [r["primaryAttributeValue"] for r in records] == ["pa\rge", "two\nlines and a \r"]
    assert records[0]["webpage_url"] == "a\nb"
    assert problems.counts == {"stray CR in an unquoted value (kept)": 1}


@pytest.mark.parametrize(("given", "months"), [({}, 25), ({"retention_months": 37}, 37),
                                               ({"retention_months": "37"}, 37)])
def test_retention_months(given: dict, months: int) -> None:
    assert parse_settings({**GOOD, **given}).retention_months == months


@pytest.mark.parametrize(("type_id", "stream", "kept"), [
    (1, "activities_visit_webpage", Retention(days=90)),
    (37, "activities_delete_lead", Retention(days=14)),
    (12, "activities_new_lead", FOREVER),
    (2, "activities_fill_out_form", Retention(months=37)),
    (100001, "activities_attended_trade_show", Retention(months=37)),  # custom
    (19, "activities_sync_lead_to_sfdc", Retention(days=90)),  # known by name
])
def test_the_retention_table(type_id: int, stream: str, kept: Retention) -> None:
    assert retention_of(type_id, stream, 37) == kept


def test_months_before_keeps_the_day_or_the_months_last() -> None:
    utc = dt.timezone.utc
    assert months_before(dt.datetime(2026, 12, 7, tzinfo=utc), 25) == \
        dt.datetime(2024, 11, 7, tzinfo=utc)
    assert months_before(dt.datetime(2026, 5, 31, tzinfo=utc), 3) == \
        dt.datetime(2026, 2, 28, tzinfo=utc)
