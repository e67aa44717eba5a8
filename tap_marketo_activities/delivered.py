"""What the tap has delivered and can still be handed again: the memory of the lookback.

A re-read of the lookback ([settled, bookmark)) returns activities the tap delivered before,
beside late ones it never saw. The memory holds the marketoGUIDs of the activities delivered
by reads whose range reaches past a stream's `settled`, exactly (a set, never a probabilistic
filter: a false "seen" would lose an activity). Each GUID sits in a bucket tagged with the
instant after which no read can return it again: the upper end of the read that delivered
it, or the activity's own date when that is later (a read by commit time returns an activity
once its commit lies in the read's range, and an activity dated past the read's end could
also come in a read by date that starts after it). A bucket is dropped once every stream has
settled past its tag: no read from then on reaches back before its tag.

It lives in the tap state beside the bookmarks it belongs with, encoded small: numeric GUIDs
as sorted deltas in varint bytes, zlib, base64; others as plain strings. 100,000 nine- or
ten-digit GUIDs, even spread over the whole ten-digit range, take about 350 KB.
"""

from __future__ import annotations

import base64
import datetime as dt
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from tap_marketo_activities.instants import isoformat, parse_datetime
from tap_marketo_activities.state import MEMORY_STATE_KEY

# The most of a read before the lookback's start whose records the memory keeps: a longer
# read is cut there (scheduler.cut_for_memory, plan.py), so that the state stays small.
REMEMBER_SPAN = dt.timedelta(days=1)


class DeliveredMemory:
    """marketoGUIDs delivered, by tag (an instant as the state's ISO text)."""

    def __init__(self, buckets: Mapping[str, Iterable[str]] | None = None) -> None:
        self.seen: set[str] = set()  # every GUID of every bucket: the hot path's lookup
        self.buckets: dict[str, set[str]] = {}
        for tag, guids in (buckets or {}).items():
            for guid in guids:
                self.add(guid, tag)

    def __contains__(self, guid: object) -> bool:
        return guid in self.seen

    def __len__(self) -> int:
        return len(self.seen)

    def add(self, guid: str, tag: str) -> None:
        """Remember `guid` until every stream has settled past `tag` (a GUID already kept
        under another tag stays there as well: the later tag keeps it)."""
        self.seen.add(guid)
        self.bucket(tag).add(guid)

    def bucket(self, tag: str) -> set[str]:
        """The GUIDs kept under `tag`, to add to in place (the record path's hot loop adds
        each to `seen` as well)."""
        bucket = self.buckets.get(tag)
        if bucket is None:
            bucket = self.buckets[tag] = set()
        return bucket

    def prune(self, settled: str) -> int:
        """Drop every bucket whose tag is at or before `settled` (the earliest `settled`
        of all streams); returns how many GUIDs are forgotten."""
        gone = [tag for tag in self.buckets if tag <= settled]
        if not gone:
            return 0
        for tag in gone:
            del self.buckets[tag]
        before = len(self.seen)
        self.seen = set().union(*self.buckets.values())
        return before - len(self.seen)

    def saved(self) -> dict[str, dict[str, Any]]:
        """The JSON-safe form for the state."""
        return {tag: encode(guids) for tag, guids in sorted(self.buckets.items()) if guids}

    @classmethod
    def from_state(cls, saved: Any) -> DeliveredMemory:
        """The memory a state holds; an absent or empty key is an empty memory. A value
        that is not one this tap wrote raises ValueError (a state edited by hand)."""
        if saved is None:
            return cls()
        if not isinstance(saved, Mapping):
            raise ValueError(f"{MEMORY_STATE_KEY} must be an object of buckets")
        return cls({str(tag): decode(bucket) for tag, bucket in saved.items()})


def settled_after(old: str | None, bookmark: str, now: dt.datetime, lookback_hours: int
                  ) -> str:
    """A stream's `settled` after a run at `now` delivered it up to `bookmark`: nothing
    before it can still change, max(old, min(bookmark, now - lookback)). A state without
    one (an older version's, or by hand) is settled at its bookmark: nothing re-read."""
    if old is None:
        return bookmark
    return max(old, min(bookmark, isoformat(now - dt.timedelta(hours=lookback_hours))))


def tag_after(stamp: str) -> str:
    """The tag of an activity dated at or after the end of the read that delivered it: a
    read from its own second on can still return it, one from the next second cannot."""
    return isoformat(parse_datetime(stamp) + dt.timedelta(seconds=1))


def encode(guids: Iterable[str]) -> dict[str, Any]:
    """Numeric GUIDs (no leading zero) as sorted deltas, varint, zlib, base64; the others
    as a sorted list of strings."""
    numbers: list[int] = []
    other: list[str] = []
    for guid in guids:
        if guid.isdigit() and guid.isascii() and (guid == "0" or guid[0] != "0"):
            numbers.append(int(guid))
        else:
            other.append(guid)
    numbers.sort()
    out = bytearray()
    previous = 0
    for number in numbers:
        delta, previous = number - previous, number
        while delta >= 0x80:
            out.append(delta & 0x7F | 0x80)
            delta >>= 7
        out.append(delta)
    saved: dict[str, Any] = {"ids": base64.b64encode(zlib.compress(bytes(out), 9)).decode()}
    if other:
        saved["other"] = sorted(other)
    return saved


def decode(saved: Any) -> list[str]:
    """The GUIDs `encode` wrote; ValueError on anything else."""
    if not isinstance(saved, Mapping):
        raise ValueError("a bucket of delivered GUIDs must be an object")
    other = saved.get("other", [])
    if not isinstance(other, list) or not all(isinstance(g, str) for g in other):
        raise ValueError("a bucket's 'other' must be a list of strings")
    text = saved.get("ids", "")
    if not isinstance(text, str):
        raise ValueError("a bucket's 'ids' must be text")
    try:
        data = zlib.decompress(base64.b64decode(text, validate=True)) if text else b""
    except (ValueError, zlib.error) as exc:
        raise ValueError(f"a bucket's 'ids' cannot be read: {exc}") from None
    guids: list[str] = []
    number = delta = shift = 0
    for byte in data:
        delta |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            number += delta
            guids.append(str(number))
            delta = shift = 0
    if shift:
        raise ValueError("a bucket's 'ids' ends inside a number")
    return guids + other
