"""The memory of delivered activities (delivered.py) and the `Late activities:` line
(lateness.py): tables, the size of a day's memory, and the hot path's lookup."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import timeit
import zlib
from typing import Any

import pytest

from tap_marketo_activities.delivered import DeliveredMemory, decode, encode, settled_after
from tap_marketo_activities.lateness import duration_text, late_line

T1, T2, T3 = "2024-02-10T00:01:00Z", "2024-02-10T00:02:00Z", "2024-02-10T03:00:00Z"


@pytest.mark.parametrize(("guids", "other"), [
    ([], None),
    (["1"], None),
    (["0", "5", "700000001", "9999999999"], None),
    (["700000001", "abc-def", "007", "১২৩", "-1", ""], ["", "-1", "007", "abc-def", "১২৩"]),
    (["12345678901234567890123", "9"], ["12345678901234567890123"]),  # past 64 bits: text
    (["", "5", "5"], [""]),  # an empty one, and one kept twice
    (["007", "7"], ["007"]),  # digits, but not a plain number
])
def test_encode_and_decode_give_back_every_guid(guids: list[str], other: list[str] | None
                                                ) -> None:
    saved = encode(guids)
    assert json.loads(json.dumps(saved)) == saved
    assert saved.get("other") == other
    assert sorted(decode(saved)) == sorted(set(guids))  # a GUID kept twice comes back once


@pytest.mark.parametrize("saved", [
    "text", {"ids": 5}, {"ids": "not base64!"}, {"ids": "aGVsbG8="},  # not zlib
    {"ids": encode([]) ["ids"], "other": [1]},
    {"ids": "eJz7DwABAAEA"},  # zlib of one byte 0xff: no width
    {"ids": base64.b64encode(zlib.compress(b"\x04abc")).decode()},  # 3 bytes of 4-byte ints
])
def test_decode_refuses_what_encode_did_not_write(saved: Any) -> None:
    with pytest.raises(ValueError):
        decode(saved)


@pytest.mark.parametrize(("adds", "settled", "kept", "forgotten"), [
    # (guid, tag) added; prune(settled); guids still seen; how many were forgotten
    ([("1", T1), ("2", T2)], T1, {"2"}, 1),
    ([("1", T1), ("2", T2)], "2024-02-10T00:00:59Z", {"1", "2"}, 0),
    ([("1", T1), ("2", T2)], T3, set(), 2),
    ([("1", T1), ("1", T3)], T2, {"1"}, 0),  # kept by its later tag
    ([], T3, set(), 0),
])
def test_prune_drops_the_buckets_every_stream_has_settled_past(
        adds: list[tuple[str, str]], settled: str, kept: set[str], forgotten: int) -> None:
    memory = DeliveredMemory()
    for guid, tag in adds:
        memory.add(guid, tag)
    assert memory.prune(settled) == forgotten
    assert {g for g, _ in adds if g in memory} == kept
    assert len(memory) == len(kept)


def test_the_state_form_round_trips_and_an_absent_key_is_an_empty_memory() -> None:
    memory = DeliveredMemory()
    for n, tag in enumerate([T1, T2, T3] * 5):
        memory.add(str(700000000 + n * 7), tag)
    memory.add("odd-guid", T2)
    back = DeliveredMemory.from_state(json.loads(json.dumps(memory.saved())))
    assert {t: set(b) for t, b in back.buckets.items()} == \
        {t: set(b) for t, b in memory.buckets.items()}
    assert "odd-guid" in back and "700000007" in back and "700000008" not in back
    assert len(DeliveredMemory.from_state(None)) == 0
    with pytest.raises(ValueError):
        DeliveredMemory.from_state(["a list"])


def test_a_day_of_100000_activities_is_kept_in_under_1_mb() -> None:
    dice = random.Random(24)
    # Marketo's activity ids: 9-10 digits, growing with gaps (many instances share them).
    guid, guids = 700_000_000, []
    for _ in range(100_000):
        guid += dice.randint(1, 40_000)
        guids.append(str(guid))
    memory = DeliveredMemory()
    for n, value in enumerate(guids):
        memory.add(value, f"2024-02-10T{n * 24 // 100_000:02d}:00:00Z")
    size = len(json.dumps(memory.saved()))
    assert size < 1_000_000, size
    assert set(DeliveredMemory.from_state(memory.saved()).seen) == set(guids)


def test_membership_is_a_set_lookup() -> None:
    memory = DeliveredMemory()
    for n in range(100_000):
        memory.add(str(700_000_000 + n), T1)
    assert isinstance(memory.seen, set)
    # Sanity, not a timing assertion: a lookup costs what one of a plain set does.
    plain = set(memory.seen)
    looked_up = timeit.timeit(lambda: "700050000" in memory.seen, number=10_000)
    bare = timeit.timeit(lambda: "700050000" in plain, number=10_000)
    print(f"memory lookup {looked_up:.4f} s, plain set {bare:.4f} s for 10,000")


NOW = dt.datetime(2024, 2, 10, 12, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(("old", "bookmark", "hours", "settled"), [
    (None, "2024-02-10T12:00:00Z", 4, "2024-02-10T12:00:00Z"),  # no settled yet: its bookmark
    ("2024-02-10T06:00:00Z", "2024-02-10T12:00:00Z", 4, "2024-02-10T08:00:00Z"),
    ("2024-02-10T06:00:00Z", "2024-02-10T12:00:00Z", 0, "2024-02-10T12:00:00Z"),
    ("2024-02-10T06:00:00Z", "2024-01-01T00:00:00Z", 4, "2024-02-10T06:00:00Z"),  # never back
    ("2024-01-01T00:00:00Z", "2024-01-20T00:00:00Z", 4, "2024-01-20T00:00:00Z"),  # backfill
    ("2024-02-10T06:00:00Z", "2024-02-10T12:00:00Z", 2160, "2024-02-10T06:00:00Z"),
])
def test_settled_after_a_run(old: str | None, bookmark: str, hours: int, settled: str) -> None:
    assert settled_after(old, bookmark, NOW, hours) == settled


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"), (59.9, "59 s"), (60, "1 min"), (4 * 60 + 59, "4 min"), (3600, "1 h"),
    (3 * 3600 + 10 * 60 + 59, "3 h 10 min"), (86400, "1 d"), (90 * 86400 + 5 * 3600, "90 d 5 h"),
    (-3, "0 s"),
])
def test_durations_are_written_in_two_units_at_most(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


@pytest.mark.parametrize(("late", "line"), [
    ([], "Late activities: none."),
    ([("Send Email", 240)], "Late activities: 1 (Send Email 1), 4 min median, 4 min at most."),
    ([("Send Email", 240)] * 35 + [("Visit Webpage", 3 * 3600 + 600)] * 2,
     "Late activities: 37 (Send Email 35, Visit Webpage 2), 4 min median, 3 h 10 min at most."),
    ([("b", 10), ("a", 20), ("a", 30), ("b", 40)],
     "Late activities: 4 (a 2, b 2), 20 s median, 40 s at most."),
])
def test_the_late_line(late: list[tuple[str, float]], line: str) -> None:
    assert late_line(late) == line
