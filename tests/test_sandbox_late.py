"""The sandbox's late activities (sandbox/late.py), over loopback HTTP: which activities are
late and by how much, what the sandbox's clock hides, and what each switch makes the bulk
filter and Get Lead Activities return."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests
from test_sandbox import EXPORT, paging_token, read_all, session, wait_done

from tap_marketo_activities.sandbox import Sandbox
from tap_marketo_activities.sandbox.__main__ import parse_args
from tap_marketo_activities.sandbox.data import to_time
from tap_marketo_activities.sandbox.late import DELAYS, MAX_DELAY

START, END = "2024-02-01T00:00:00Z", "2024-02-04T00:00:00Z"
CLOCK = "2024-02-03T00:00:00Z"  # the sandbox's clock in these tests
LATE_TYPES = sorted(DELAYS)
TYPE_IDS = [1, 2, 3, 6, 7, 10, 11, 12, 100001, 100002]
ALL_TYPES = ",".join(map(str, TYPE_IDS))
FIELDS = ["marketoGUID", "activityDate", "activityTypeId"]


def make(bulk_by: str = "date", rest_order: str = "date", late: bool = True) -> Sandbox:
    return Sandbox(job_latency=0.05, data_start=START, data_end=END, activities_per_day=2880,
                   late=late, bulk_by=bulk_by, rest_order=rest_order, rate_limit_calls=1000)


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with make() as sandbox:
        sandbox.set_clock(CLOCK)
        yield sandbox


def delay_of(box: Sandbox, guid: str, date: str) -> float:
    committed = box.committed_at(guid)
    assert committed is not None
    return (to_time(committed) - to_time(date)).total_seconds()


def export(box: Sandbox, start: str, end: str) -> list[dict[str, str]]:
    http = session(box)
    body = {"format": "CSV", "fields": FIELDS,
            "filter": {"createdAt": {"startAt": start, "endAt": end}}}
    answer = http.post(box.base_url + EXPORT + "/create.json", json=body, timeout=5).json()
    export_id = answer["result"][0]["exportId"]
    http.post(f"{box.base_url}{EXPORT}/{export_id}/enqueue.json", timeout=5)
    assert wait_done(box, http, export_id)["status"] == "Completed"
    text = http.get(f"{box.base_url}{EXPORT}/{export_id}/file.json", timeout=5).text
    return list(csv.DictReader(io.StringIO(text, newline="")))


def read(box: Sandbox, since: str) -> list[dict]:
    http: requests.Session = session(box)
    rows, _ = read_all(box, http, paging_token(box, http, since), ALL_TYPES)
    return rows


def test_a_share_of_three_types_is_late_by_what_each_type_is_late_by(box: Sandbox) -> None:
    late: Counter[int] = Counter()
    total: Counter[int] = Counter()
    for activity in box.visible_at(CLOCK):
        type_id, guid = activity["activityTypeId"], activity["marketoGUID"]
        delay = delay_of(box, guid, activity["activityDate"])
        total[type_id] += 1
        if delay:
            late[type_id] += 1
            share, least, most = DELAYS[type_id]  # KeyError: a type that is never late
            assert least <= delay <= most
    assert set(late) == set(LATE_TYPES)
    for type_id in LATE_TYPES:
        share = DELAYS[type_id][0]
        assert total[type_id] / share / 2 < late[type_id] < total[type_id] / share * 2


def test_without_late_nothing_is_late_and_the_clock_still_hides_the_future() -> None:
    with make(late=False) as box:
        box.set_clock(CLOCK)
        seen = box.visible_at(CLOCK)
        assert {a["marketoGUID"] for a in seen} == {
            a["marketoGUID"] for a in box.expected(START, CLOCK) if a["activityDate"] < CLOCK}
        assert all(box.committed_at(a["marketoGUID"]) == a["activityDate"] for a in seen)
        assert max(r["activityDate"] for r in read(box, "2024-02-02T23:00:00Z")) < CLOCK


def test_visible_at_lists_what_is_committed_before_the_clock_in_commit_order(
        box: Sandbox) -> None:
    seen = box.visible_at(CLOCK)
    commits = [box.committed_at(a["marketoGUID"]) or "" for a in seen]
    assert commits == sorted(commits) and max(commits) < CLOCK
    dated_before = {a["marketoGUID"] for a in box.expected(START, CLOCK)
                    if a["activityDate"] < CLOCK}
    hidden = dated_before - {a["marketoGUID"] for a in seen}
    assert hidden, "some activities dated before the clock are not committed yet"
    earlier = {a["marketoGUID"] for a in box.visible_at("2024-02-02T00:00:00Z")}
    assert earlier < {a["marketoGUID"] for a in seen}


@pytest.mark.parametrize("bulk_by", ["date", "commit"])
def test_the_bulk_filter_selects_by_date_or_by_commit_time(bulk_by: str) -> None:
    start, end = "2024-02-02T00:00:00Z", "2024-02-02T12:00:00Z"
    with make(bulk_by=bulk_by) as box:
        box.set_clock(CLOCK)
        got = {r["marketoGUID"]: r["activityDate"] for r in export(box, start, end)}
        by = "activityDate" if bulk_by == "date" else "commit"
        wanted = {a["marketoGUID"]: a["activityDate"] for a in box.visible_at(CLOCK)
                  if start <= (a["activityDate"] if by == "activityDate" else
                               box.committed_at(a["marketoGUID"]) or "") <= end}
        assert got == wanted
        dated_before = [g for g, date in got.items() if date < start]
        assert bool(dated_before) == (bulk_by == "commit")
        # The clock hides what is not committed yet: a window read before its commits.
        box.set_clock("2024-02-02T11:00:00Z")
        sooner = {r["marketoGUID"] for r in export(box, start, end)}
        assert sooner < set(got)


def test_rest_in_date_order_passes_by_what_is_committed_later_for_good(box: Sandbox) -> None:
    since = "2024-02-02T12:00:00Z"
    box.set_clock("2024-02-02T18:00:00Z")
    first = read(box, since)
    dates = [r["activityDate"] for r in first]
    assert dates == sorted(dates) and min(dates) >= since
    box.set_clock(CLOCK)
    again = read(box, since)
    assert {r["marketoGUID"] for r in first} < {r["marketoGUID"] for r in again}
    assert min(r["activityDate"] for r in again) >= since  # never one dated before it
    wanted = [a["marketoGUID"] for a in box.visible_at(CLOCK, TYPE_IDS)
              if a["activityDate"] >= since]
    assert sorted(r["marketoGUID"] for r in again) == sorted(wanted)


def test_rest_in_commit_order_starts_at_a_commit_time_and_hands_over_late_ones() -> None:
    since = "2024-02-02T12:00:00Z"
    with make(rest_order="commit") as box:
        box.set_clock(CLOCK)
        rows = read(box, since)
        commits = [box.committed_at(str(r["marketoGUID"])) or "" for r in rows]
        assert commits == sorted(commits) and min(commits) >= since
        wanted = [a["marketoGUID"] for a in box.visible_at(CLOCK, TYPE_IDS)
                  if (box.committed_at(a["marketoGUID"]) or "") >= since]
        assert [r["marketoGUID"] for r in rows] == wanted
        late = [r for r in rows if r["activityDate"] < since]
        assert late and all(to_time(since) - to_time(r["activityDate"])
                            <= timedelta(seconds=MAX_DELAY) for r in late)
        # Small pages walk the same sequence.
        http = session(box)
        small, _ = read_all(box, http, paging_token(box, http, since), ALL_TYPES, batch=40)
        assert small == rows


def test_the_command_line_sets_both_switches() -> None:
    args = parse_args(["--late", "--bulk-by", "commit", "--rest-order", "commit"])
    assert (args.late, args.bulk_by, args.rest_order) == (True, "commit", "commit")
    plain = parse_args([])
    assert (plain.late, plain.bulk_by, plain.rest_order) == (False, "date", "date")
    with pytest.raises(SystemExit):
        parse_args(["--bulk-by", "created"])


def test_a_wrong_order_is_refused() -> None:
    with pytest.raises(ValueError):
        make(rest_order="created")

