"""The record path's rules for a row's date and the memory of delivered activities
(delivery.RecordPath), on a real tap's stream: tables."""

from __future__ import annotations

import datetime as dt
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from singer_sdk.singerlib import RecordMessage
from test_sdk_contract import CONFIG, NAME, catalog

from tap_marketo_activities.delivered import DeliveredMemory
from tap_marketo_activities.delivery import RecordPath, Window
from tap_marketo_activities.schema import KEY, REPLICATION_KEY
from tap_marketo_activities.streams import ActivityStream
from tap_marketo_activities.tap import TapMarketoActivities

LOWER, UPPER = "2024-01-02T10:00:00Z", "2024-01-02T11:00:00Z"
WINDOW = Window(dt.datetime(2024, 1, 2, 10, tzinfo=dt.timezone.utc),
                dt.datetime(2024, 1, 2, 11, tzinfo=dt.timezone.utc))


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[ActivityStream]:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    tap = TapMarketoActivities(config=CONFIG, catalog=catalog(), parse_env_config=False)
    found = tap.streams[NAME]
    assert isinstance(found, ActivityStream)
    written: list[str] = []
    found.written = written  # type: ignore[attr-defined]
    monkeypatch.setattr(tap, "write_message", lambda message: written.append(
        message.record[KEY]) if isinstance(message, RecordMessage) else None)
    monkeypatch.setattr(tap.message_writer, "write_record",
                        lambda framing, record: written.append(record[KEY]))
    try:
        yield found
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def row(guid: str, date: str) -> dict[str, Any]:
    return {KEY: guid, REPLICATION_KEY: date, "activityTypeId": 1}


def deliver(stream: ActivityStream, rows: list[tuple[str, str]], memory: DeliveredMemory,
            remember_after: str | None = "") -> Any:
    path = RecordPath(None, memory=memory, remember_after=remember_after)
    builder = stream.builder()
    delivered = path.deliver(((builder, row(g, d)) for g, d in rows), {builder: stream}, WINDOW)
    path.finish()
    return delivered


@pytest.mark.parametrize(("rows", "known", "out", "at_edge", "seen_before"), [
    # (guid, activityDate) handed over; GUIDs the memory held; GUIDs written; counts
    ([("1", LOWER), ("2", "2024-01-02T10:59:59Z")], [], ["1", "2"], 0, 0),
    ([("1", "2024-01-02T09:00:00Z")], [], ["1"], 0, 0),  # before the window: delivered
    ([("1", UPPER)], [], ["1"], 0, 0),  # memory on, a window inside the run: now
    ([("1", LOWER), ("2", LOWER)], ["2"], ["1"], 0, 1),
    ([("1", "2024-01-01T00:00:00Z")], ["1"], [], 0, 1),  # late, and delivered before
    ([("1", LOWER), ("1", LOWER)], [], ["1"], 0, 1),  # twice in one read
])
def test_what_a_window_delivers(stream: ActivityStream, rows: list[tuple[str, str]],
                                known: list[str], out: list[str], at_edge: int,
                                seen_before: int) -> None:
    memory = DeliveredMemory({"2024-01-02T10:30:00Z": known})
    delivered = deliver(stream, rows, memory)
    assert stream.written == out  # type: ignore[attr-defined]
    assert delivered.records == {NAME: len(out)}
    assert (delivered.at_upper_edge, delivered.seen_before) == (at_edge, seen_before)
    assert set(out) <= memory.seen  # remembered: until every stream settles past its tag


@pytest.mark.parametrize(("remember_after", "out", "tags"), [
    # memory on: dated after the end and committed before it (a custom activity's date),
    # a read by commit time never returns it again: delivered now, kept past its own date
    ("", ["1", "2"], {"2024-01-02T11:00:01Z", "2024-01-03T00:00:01Z"}),
    (None, [], set()),  # no lookback: the next window's
])
def test_a_row_dated_at_or_after_a_window_end_goes_now_only_with_the_memory(
        stream: ActivityStream, remember_after: str | None, out: list[str],
        tags: set[str]) -> None:
    memory = DeliveredMemory()
    delivered = deliver(stream, [("1", UPPER), ("2", "2024-01-03T00:00:00Z")], memory,
                        remember_after)
    assert stream.written == out  # type: ignore[attr-defined]
    assert delivered.at_upper_edge == 2 - len(out)
    assert {tag for tag, bucket in memory.buckets.items() if bucket} == tags


@pytest.mark.parametrize(("remember_after", "kept"), [
    ("", {"1"}), ("2024-01-02T10:59:59Z", {"1"}),
    (UPPER, set()),  # the window settles with this run: no later read reaches it
    ("2024-02-01T00:00:00Z", set()),
    (None, set()),  # no lookback
])
def test_a_window_that_settles_with_the_run_is_not_remembered(
        stream: ActivityStream, remember_after: str | None, kept: set[str]) -> None:
    memory = DeliveredMemory()
    deliver(stream, [("1", LOWER)], memory, remember_after)
    assert stream.written == ["1"]  # type: ignore[attr-defined]
    assert set(memory.seen) == kept
    assert all(tag == UPPER for tag in memory.saved())


@pytest.mark.parametrize(("bookmark", "late"), [
    (None, []),  # a stream's first run: nothing is late
    (LOWER, [(NAME, 3600.0), (NAME, 86400.0 + 600)]),
    ("2024-01-01T00:00:00Z", []),
])
def test_late_rows_are_those_dated_before_the_bookmark_at_the_start_of_the_run(
        stream: ActivityStream, bookmark: str | None, late: list[tuple[str, float]]) -> None:
    if bookmark:
        stream.stream_state["replication_key_value"] = bookmark
    rows = [("1", "2024-01-02T09:00:00Z"), ("2", LOWER), ("3", "2024-01-01T09:50:00Z")]
    delivered = deliver(stream, rows, DeliveredMemory())
    assert stream.written == ["1", "2", "3"]  # type: ignore[attr-defined]
    assert delivered.late == late


def test_a_row_dated_exactly_at_the_runs_end_is_the_next_runs(stream: ActivityStream) -> None:
    """end_date promises nothing at or after it: even with the memory on, a row stamped at
    the run's end waits for the next run, whose re-read of the lookback brings it."""
    memory = DeliveredMemory()
    path = RecordPath(None, memory=memory, remember_after="", run_end=UPPER)
    builder = stream.builder()
    delivered = path.deliver(((builder, row(g, d)) for g, d in
                              [("1", UPPER), ("2", LOWER)]), {builder: stream}, WINDOW)
    path.finish()
    assert stream.written == ["2"]  # type: ignore[attr-defined]
    assert delivered.at_upper_edge == 1 and "1" not in memory
