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
as sorted differences in fixed-width integers, zlib, base64; others as plain strings.
100,000 nine- or ten-digit GUIDs a few thousand apart take about 250 KB.
"""

from __future__ import annotations

import array
import base64
import datetime as dt
import itertools
import operator
import sys
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from tap_marketo_activities.instants import isoformat, parse_datetime
from tap_marketo_activities.state import MEMORY_STATE_KEY

# The most of a read before the lookback's start whose records the memory keeps: a longer
# read is cut there (scheduler.cut_for_memory, plan.py), so that the state stays small.
REMEMBER_SPAN = dt.timedelta(days=1)
# More than a Get Lead Activities read lasts (its calls are capped): the records of a read,
# which may include any activity committed until the read ends, are kept this long after
# its start (roads/rest.py).
REST_READ_MARGIN = dt.timedelta(days=1)


class DeliveredMemory:
    """marketoGUIDs delivered, by tag (an instant as the state's ISO text)."""

    def __init__(self, buckets: Mapping[str, Iterable[str]] | None = None) -> None:
        self.seen: set[str] = set()  # every GUID of every bucket: the hot path's lookup
        # A bucket is a list (8 bytes a GUID, where a set takes 30 or more): `seen` alone
        # answers "delivered before?", so a bucket needs no lookup of its own.
        self.buckets: dict[str, list[str]] = {}
        self._saved: dict[str, tuple[int, dict[str, Any]]] = {}  # tag: (length, encoded)
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
        self.bucket(tag).append(guid)

    def bucket(self, tag: str) -> list[str]:
        """The GUIDs kept under `tag`, to append to in place (the record path's hot loop
        adds each to `seen` as well)."""
        bucket = self.buckets.get(tag)
        if bucket is None:
            bucket = self.buckets[tag] = []
        return bucket

    def prune(self, settled: str) -> int:
        """Drop every bucket whose tag is at or before `settled` (the earliest `settled`
        of all streams); returns how many GUIDs are forgotten."""
        gone = [tag for tag in self.buckets if tag <= settled]
        if not gone:
            return 0
        for tag in gone:
            del self.buckets[tag]
            self._saved.pop(tag, None)
        before = len(self.seen)
        self.seen = set().union(*self.buckets.values())
        return before - len(self.seen)

    def saved(self) -> dict[str, dict[str, Any]]:
        """The JSON-safe form for the state. A bucket only grows, so one whose length has
        not changed since it was last encoded is not encoded again (every STATE carries
        the memory; a month's last window may hold a million GUIDs)."""
        out = {}
        for tag, guids in sorted(self.buckets.items()):
            if not guids:
                continue
            cached = self._saved.get(tag)
            if cached is None or cached[0] != len(guids):
                cached = self._saved[tag] = (len(guids), encode(guids))
            out[tag] = cached[1]
        return out

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
    """Numeric GUIDs (no leading zero, below 10**18) as sorted differences, fixed-width
    little-endian integers (4 bytes, or 8 when a difference needs it), zlib, base64; the
    others as a sorted list of strings. Every step runs in C and holds no more than a few
    arrays: a million GUIDs take a third of a second and about 30 MB while encoded."""
    numeric, other = _split(list(guids))
    # Plain numbers as text sort as numbers by (length, text): no integer list is built.
    numeric.sort()
    numeric.sort(key=len)
    values = array.array("Q", map(int, numeric))
    del numeric
    packed = array.array("Q", map(operator.sub, values, itertools.chain((0,), values)))
    del values
    if 0 in packed[1:]:  # a GUID kept twice: a difference of 0, dropped (0 itself stays)
        packed = array.array("Q", [*packed[:1], *filter(None, packed[1:])])
    wide = bool(packed) and max(packed) >= 1 << 32
    if not wide:
        packed = array.array("I", packed)
    if sys.byteorder != "little":
        packed.byteswap()
    raw = (b"\x08" if wide else b"\x04") + packed.tobytes()
    saved: dict[str, Any] = {"ids": base64.b64encode(zlib.compress(raw, 1)).decode()}
    if other:
        saved["other"] = sorted(other)
    return saved


def _split(guids: list[str]) -> tuple[list[str], set[str]]:
    """(the GUIDs that are plain numbers below 10**18; the others). Marketo's are all
    numbers: that case is tried first, at C speed."""
    if all(guids) and max(map(len, guids), default=0) < 19:
        joined = "".join(guids)
        plain = joined.isascii() and joined.isdigit()
        del joined
        # Digits only: no GUID starts with "0" unless it is "0".
        if plain and not any(g[0] == "0" and len(g) > 1 for g in guids if g[0] == "0"):
            return guids, set()
    numeric: list[str] = []
    other: set[str] = set()
    for guid in guids:
        if guid.isdigit() and guid.isascii() and (guid == "0" or guid[0] != "0") and \
                len(guid) < 19:
            numeric.append(guid)
        else:
            other.add(guid)
    return numeric, other


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
        raw = zlib.decompress(base64.b64decode(text, validate=True)) if text else b""
    except (ValueError, zlib.error) as exc:
        raise ValueError(f"a bucket's 'ids' cannot be read: {exc}") from None
    if not raw:
        return list(other)
    width, body = raw[0], raw[1:]
    if width not in (4, 8) or len(body) % width:
        raise ValueError("a bucket's 'ids' is not a list of whole numbers")
    packed = array.array("Q" if width == 8 else "I")
    if packed.itemsize != width:
        raise ValueError("this machine's integers are not the width the state was written with")
    packed.frombytes(body)
    if sys.byteorder != "little":
        packed.byteswap()
    return [*map(str, itertools.accumulate(packed)), *other]
