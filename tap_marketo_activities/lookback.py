"""The lookback: each run reads again what lies within `lookback_hours` before a stream's
bookmark, and delivers only what it has not delivered before (issue 24, docs/late-activities.md).

Per stream, `settled` (in its bookmark's state) is the instant before which nothing can
still arrive: a run at `end` that delivered up to `bookmark` settles
max(old, min(bookmark, end - lookback)). A forward read starts there, not at the bookmark,
unless the stream's bookmark already moved in this run (the lookback is read once a run).
The memory of delivered activities (delivered.py) holds what a read from `settled` can
return again; it is pruned at the earliest `settled` of the streams read, and a stream whose
`settled` lies below what the memory still covers (not selected for a while) is raised to
it, so that no read ever meets a delivered activity the memory forgot.

A state without `settled` (an older version's, or by hand) is settled at its bookmark: the
first run re-reads nothing before it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from tap_marketo_activities.delivered import DeliveredMemory, settled_after
from tap_marketo_activities.instants import isoformat
from tap_marketo_activities.settings import parse_instant
from tap_marketo_activities.state import MEMORY_STATE_KEY
from tap_marketo_activities.streams import SETTLED, ActivityStream

logger = logging.getLogger(__name__)

BOOKMARK = "replication_key_value"


class Lookback:
    """The run's lookback: where each stream's forward read starts, and the memory."""

    def __init__(self, state: Mapping[str, Any], streams: Iterable[ActivityStream],
                 end: dt.datetime, hours: int, dry_run: bool) -> None:
        self.hours = hours
        self.end = end
        memory = _memory(state)
        self.memory = memory or DeliveredMemory()
        # What each stream had at the start of the run: the plan reads from `settled_in`
        # while the bookmark is still `bookmark_in`.
        self.bookmark_in: dict[str, str] = {}
        self.settled_in: dict[str, str] = {}
        # A REST read that stopped short of its end: what lies before its edge was read up
        # to where it stopped, and in commit order an activity dated before the edge may be
        # committed after that point: `settled` stays a lookback before the edge.
        self.caps: dict[str, str] = {}
        for stream in streams:
            bookmark = _instant(stream.stream_state.get(BOOKMARK))
            settled = _instant(stream.stream_state.get(SETTLED))
            self.bookmark_in[stream.name] = bookmark
            # No settled beside a bookmark (an older state, or a memory that could not be
            # read): settled at the bookmark, nothing before it is read again.
            self.settled_in[stream.name] = min(settled, bookmark) if settled and \
                memory is not None else bookmark
        # Records of windows that end after this instant are remembered: a later read from
        # a `settled` can return them. None: nothing is remembered (lookback 0, --test).
        self.remember_after = isoformat(end - dt.timedelta(hours=hours)) \
            if hours and not dry_run else None

    def read_from(self, stream: ActivityStream) -> dt.datetime | None:
        """Where the stream's forward read starts: `settled`, while its bookmark has not
        moved in this run; else its bookmark (None: no bookmark yet)."""
        bookmark = _instant(stream.stream_state.get(BOOKMARK))
        if not bookmark:
            return None
        start = self.settled_in.get(stream.name, bookmark) \
            if bookmark == self.bookmark_in.get(stream.name) else bookmark
        return parse_instant("bookmark", start or bookmark)

    def lookback_of(self, stream: ActivityStream) -> dt.timedelta:
        """How much before its bookmark the stream's read starts in this run."""
        start, bookmark = self.read_from(stream), stream.high_edge()
        return bookmark - start if start and bookmark and bookmark > start else dt.timedelta()

    def stopped_short(self, stream: ActivityStream, edge: str) -> None:
        """The stream's read in this run stopped at `edge` before its end (an odd answer,
        the call cap): nothing after `edge` minus the lookback is settled by this run.
        Without a lookback nothing is remembered, so nothing may be read again."""
        if not self.hours or self.remember_after is None:
            return
        cap = isoformat(parse_instant("edge", edge) - dt.timedelta(hours=self.hours))
        self.caps[stream.name] = min(cap, self.caps.get(stream.name, cap))

    def settle(self, streams: Iterable[ActivityStream], state: MutableMapping[str, Any]
               ) -> None:
        """Each stream's `settled` after what it has delivered so far; the memory pruned
        and put into `state` (called before every STATE)."""
        settled = []
        for stream in streams:
            bookmark = _instant(stream.stream_state.get(BOOKMARK))
            old = self.settled_in.get(stream.name) or ""
            if not bookmark or (bookmark == self.bookmark_in.get(stream.name) and
                                old < bookmark):
                # Its lookback is not read again yet in this run (a read that moves the
                # bookmark has read it): what it settled stays. No bookmark at the start
                # ("" settled): nothing of it was delivered before.
                if old:
                    settled.append(old)
                continue
            now = settled_after(old, bookmark, self.end, self.hours)
            if stream.name in self.caps:
                now = max(old, min(now, self.caps[stream.name]))
            stream.stream_state[SETTLED] = now
            settled.append(now)
        if settled:
            edge = min(settled)
            self.memory.prune(edge)
            _raise_lagging(state, edge)
        # Written even when empty: a state whose streams have a `settled` but no memory
        # beside it (dropped by a tool that keeps only bookmarks) re-reads nothing.
        state[MEMORY_STATE_KEY] = self.memory.saved()


def _raise_lagging(state: MutableMapping[str, Any], edge: str) -> None:
    """A stream not read in this run, settled before `edge`: the memory no longer covers
    it, so it is settled at `edge` (or its bookmark, when that is earlier)."""
    for stream_state in (state.get("bookmarks") or {}).values():
        settled = _instant(stream_state.get(SETTLED)) if isinstance(stream_state, dict) \
            else ""
        bookmark = _instant(stream_state.get(BOOKMARK)) if settled else ""
        if settled and bookmark and settled < edge:
            stream_state[SETTLED] = max(settled, min(bookmark, edge))


def _memory(state: Mapping[str, Any]) -> DeliveredMemory | None:
    """The memory the state holds; None when it is absent or cannot be read (each stream
    is then settled at its bookmark: nothing sent twice, late ones of the lookback not
    read once)."""
    if MEMORY_STATE_KEY not in state:
        return None
    try:
        return DeliveredMemory.from_state(state.get(MEMORY_STATE_KEY))
    except ValueError as exc:
        logger.warning("The state's %s cannot be read (%s): this run re-reads nothing "
                       "before the bookmarks, so late activities of the last lookback_hours "
                       "are not looked for once.", MEMORY_STATE_KEY, exc)
        return None


def _instant(value: Any) -> str:
    """A state's instant in our ISO form ("" when absent); a bookmark edited by hand may
    carry an offset, and text order is time order only in one form."""
    if not value:
        return ""
    return isoformat(parse_instant("bookmark", str(value)))
