"""The one record path: rows from every source become records of their streams.

Marketo hands rows from three places (export files, Get Lead Activities pages, Get Deleted
Leads pages); each source turns its rows into (builder, record) pairs through the same
RecordBuilder, and this module hands each record to its own stream's SDK record loop
(`Stream._sync_records`, driven one record at a time). So stream maps, flattening, BATCH
messages, `--test`'s record limit and the record counts behave alike for every source.

A window is half-open, [lower, upper). A row stamped before `lower` is never dropped for its
date: Marketo may commit an activity after later ones (a late Send Email, a backdated
visit), and a read by commit time hands it over in a window after its date. It is delivered
unless the memory of delivered activities (delivered.py) holds it, as is every row of the
window: a re-read of the lookback delivers only what it did not deliver before. With no
lookback, a row stamped at or after `upper` belongs to the next window (of this run, or of
the next run, which starts at the bookmark `upper`), so no row is delivered by two windows,
whatever a source's end bound includes. With the lookback's memory on, such a row is
delivered and remembered (a read by commit time may never return it again: a custom
activity can carry a date after its commit), except one stamped exactly at the run's end,
which the next run's re-read brings.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from singer_sdk.batch import Batcher
from singer_sdk.exceptions import AbortedSyncFailedException, AbortedSyncPausedException
from typing_extensions import override

from tap_marketo_activities.client import MarketoError
from tap_marketo_activities.delivered import DeliveredMemory, tag_after
from tap_marketo_activities.instants import isoformat, parse_datetime
from tap_marketo_activities.output import OutputClosed
from tap_marketo_activities.records import FileRejected, RecordBuilder
from tap_marketo_activities.schema import KEY, REPLICATION_KEY
from tap_marketo_activities.streams import ActivityStream

if TYPE_CHECKING:
    # Typing only: the SDK has no public path for it (tests/test_sdk_contract.py).
    from singer_sdk.helpers._batch import BatchConfig

ABORTED = (AbortedSyncPausedException, AbortedSyncFailedException)  # --test's record limit
PROGRESS_ROWS = 1024  # how often the record loop calls back (a state a new job waits for)

Rows = Iterable[tuple[RecordBuilder, dict[str, Any]]]


class StreamMapFailed(Exception):
    """A stream map or flattening failed on a record: the user's expression, not Marketo."""

    def __init__(self, stream: str, error: Exception) -> None:
        super().__init__(stream, error)
        self.stream, self.error = stream, error

    @override
    def __str__(self) -> str:
        return (f"{self.stream}: the stream map failed on a record ({type(self.error).__name__}: "
                f"{self.error}). Check stream_maps for this stream; nothing of the window was "
                "bookmarked, so the next run delivers it again.")


@dataclass(frozen=True)
class Window:
    """A half-open interval of activityDate, [lower, upper)."""

    start: dt.datetime
    end: dt.datetime

    @property
    def lower(self) -> str:
        return isoformat(self.start)

    @property
    def upper(self) -> str:
        return isoformat(self.end)


@dataclass
class Delivered:
    """What one window's rows came to."""

    records: dict[str, int]  # stream name -> records written
    at_upper_edge: int = 0  # rows stamped at or after the window's end: the next window's
    seen_before: int = 0  # rows the memory holds: delivered by an earlier read
    below_floor: int = 0  # rows before their stream's own start, in a read it shares
    # (stream name, seconds) of each record dated before its stream's bookmark at the start
    # of the run, a late activity, and how far before that bookmark it lies
    late: list[tuple[str, float]] = field(default_factory=list)


class Batches:
    """BATCH messages for one stream: records go to the SDK's batch files, flushed at the
    batch size and at the end of each window (before its bookmark moves)."""

    def __init__(self, stream: ActivityStream, config: BatchConfig) -> None:
        self.stream = stream
        self.config = config
        self.batcher = Batcher(stream.tap_name, stream.name, config)
        self.records: list[dict] = []
        self.counter = stream.get_batch_counter()
        self.counter.__enter__()

    def add(self, record: dict) -> None:
        self.records.append(record)
        if len(self.records) >= self.config.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.records:
            return
        for manifest in self.batcher.get_batches(records=iter(self.records)):
            self.stream._write_batch_message(encoding=self.config.encoding, manifest=manifest)
            self.counter.increment()
        self.records = []

    def close(self) -> None:
        self.counter.__exit__(None, None, None)


class StreamFeed:
    """One stream's SDK record loop, handed one record at a time."""

    def __init__(self, stream: ActivityStream, batch_config: BatchConfig | None) -> None:
        self.stream = stream
        stream._write_schema_message()
        self.batches = Batches(stream, batch_config) if batch_config else None
        self.loop: Iterator[dict] = stream._sync_records(write_messages=self.batches is None)
        self.open = True  # False once --test's record limit ended it
        self.records = 0  # written in the window being delivered
        # In a read shared with streams at older bookmarks: this stream's own start. What is
        # dated before it was this stream's earlier reads' (plan.Read.floors); "" elsewhere.
        self.floor = ""
        # Opened before any of the run's windows moves the stream's bookmark: a record dated
        # before this one arrived late ("" when there is none yet: nothing is late).
        self.bookmark: str = stream.stream_state.get("replication_key_value") or ""
        # What the memory knows a record by: its marketoGUID, or the whole primary key of a
        # stream whose records share one (merged_leads: one per lead merged away).
        keys = tuple(stream.primary_keys or (KEY,))
        self.key_columns: tuple[str, ...] | None = None if keys == (KEY,) else keys

    def key_of(self, record: dict[str, Any]) -> str:
        assert self.key_columns is not None
        return "/".join(str(record.get(column)) for column in self.key_columns)

    def put(self, record: dict[str, Any]) -> None:
        """Raises one of ABORTED once --test's record limit is reached (the feed is closed
        then), a stream map's failure as StreamMapFailed."""
        self.stream.fed = record
        try:
            out = next(self.loop)
        except ABORTED:
            self.open = False  # --test's one record per stream is out
            raise
        except Exception as exc:
            _raise_named(self, exc)
        self.records += 1
        if self.batches is not None:
            self.batches.add(out)

    def end_window(self) -> None:
        if self.batches:
            self.batches.flush()  # the BATCH message before the state that covers it

    def finish(self) -> None:
        """The SDK's end of a stream: its record count."""
        if self.open:
            self.stream.fed = None
            try:
                for _ in self.loop:
                    pass
            except ABORTED:
                pass
            self.open = False
        if self.batches:
            self.batches.close()


class RecordPath:
    """Every stream's feed, and the one loop that hands each row to its stream."""

    def __init__(self, batch_config: BatchConfig | None,
                 on_progress: Callable[[], None] = lambda: None,
                 memory: DeliveredMemory | None = None,
                 remember_after: str | None = None, run_end: str | None = None) -> None:
        self.batch_config = batch_config
        self.on_progress = on_progress  # called every PROGRESS_ROWS rows
        self.feeds: dict[str, StreamFeed] = {}
        self.memory = DeliveredMemory() if memory is None else memory
        # A window that ends at or before this instant (the run's time less the lookback)
        # settles with this run: no later read reaches it, so its records are not
        # remembered (a backfill costs the memory nothing). None: nothing is remembered
        # (no lookback: lookback_hours 0, or --test).
        self.remember_after = remember_after
        # The run's end (end_date, or now): nothing dated at or after it is delivered by
        # this run. None: no such bound (the tests of the record path alone).
        self.run_end = run_end
        # (stream name, seconds) of every late activity of the run (lateness.late_line)
        self.late: list[tuple[str, float]] = []

    def feed(self, stream: ActivityStream) -> StreamFeed:
        """The stream's feed, opened (SCHEMA written) on first use."""
        if stream.name not in self.feeds:
            self.feeds[stream.name] = StreamFeed(stream, self.batch_config)
        return self.feeds[stream.name]

    @property
    def open(self) -> bool:
        """Some stream still takes records (--test closes each after its first)."""
        return not self.feeds or any(feed.open for feed in self.feeds.values())

    def deliver(self, rows: Rows, streams: Mapping[RecordBuilder, ActivityStream],
                window: Window, floors: Mapping[str, str] | None = None,
                remember_until: str | None = None) -> Delivered:
        """Every row stamped before the window's end that the memory does not hold, to its
        stream, and remembered; the window's BATCH files flushed. Rows stamped at or after
        its end are the next window's; `floors`: streams sharing this read from an older
        start take only what lies from their own start on."""
        feeds = {builder: self.feed(stream) for builder, stream in streams.items()}
        for feed in feeds.values():
            feed.records = 0
            feed.floor = (floors or {}).get(feed.stream.name, "")
            feed.stream.extracted_at = dt.datetime.now(dt.timezone.utc)
        delivered = Delivered({})
        try:
            self._deliver(iter(rows), feeds, window.upper, delivered,
                          remember_until or window.upper)
        finally:
            for feed in feeds.values():
                feed.stream.records_written += feed.records  # also of a window cut short
        for feed in feeds.values():
            feed.end_window()
        delivered.records = {f.stream.name: f.records for f in feeds.values()}
        self.late += delivered.late
        return delivered

    def _deliver(self, rows: Iterator[tuple[RecordBuilder, dict[str, Any]]],
                 feeds: Mapping[RecordBuilder, StreamFeed], upper: str,
                 out: Delivered, tag: str) -> None:
        """The hot loop, counting into `out`. Resumed after --test's record limit closes a
        stream, as the rows of the others go on. `tag`: no read that starts after it can
        return this window's records again (`upper` for an export window)."""
        after = self.remember_after
        kept = self.memory.bucket(tag) if after is not None and upper > after else None
        while True:
            try:
                self._rows(rows, feeds, upper, out, kept)
                return
            except ABORTED:
                if not any(f.open for f in feeds.values()):
                    return  # the rest of the source is not worth reading

    def _rows(self, rows: Iterator[tuple[RecordBuilder, dict[str, Any]]],
              feeds: Mapping[RecordBuilder, StreamFeed], upper: str, out: Delivered,
              kept: list[str] | None) -> None:
        seen, late, on_progress = self.memory.seen, out.late, self.on_progress
        memory_on = self.remember_after is not None
        # Dated exactly at the end of a window inside the run: with the memory on it goes
        # now (a read by commit time may not return it in the next window; by date, the
        # next window does, and the memory skips it). At the run's end: the next run's.
        at_end_now = memory_on and (self.run_end is None or upper < self.run_end)
        count = 0
        for builder, record in rows:
            feed = feeds[builder]
            stamp = record[REPLICATION_KEY]
            past_end = stamp >= upper
            # Dated after the end and handed over anyway (a read by commit time, a custom
            # activity's date): with the memory on it goes now, and is remembered, as no
            # later window by commit time returns it; without, the next window's.
            if past_end and (not memory_on or (stamp == upper and not at_end_now)):
                out.at_upper_edge += 1
                continue
            if stamp < feed.floor:
                out.below_floor += 1
                continue
            key = record[KEY] if feed.key_columns is None else feed.key_of(record)
            if key in seen:
                out.seen_before += 1
            elif feed.open:
                feed.put(record)
                if past_end:  # rare: a read from its own date may return it again
                    seen.add(key)
                    self.memory.add(key, tag_after(stamp))
                elif kept is not None:
                    seen.add(key)
                    kept.append(key)
                if stamp < feed.bookmark:  # rare: parsed only then
                    late.append((feed.stream.name, lateness(stamp, feed.bookmark)))
                count += 1
                if not count % PROGRESS_ROWS:
                    on_progress()

    def finish(self) -> None:
        for feed in self.feeds.values():
            feed.finish()


def lateness(stamp: str, bookmark: str) -> float:
    """Seconds from an activity's date to the bookmark it arrived after."""
    return (parse_datetime(bookmark) - parse_datetime(stamp)).total_seconds()


def _raise_named(feed: StreamFeed, exc: Exception) -> NoReturn:
    """A failure while a stream's record was written: a stream map's or the SDK's is
    named after its stream; our own errors and a closed output pass as they are."""
    if isinstance(exc, OutputClosed | MarketoError | FileRejected) or \
            feed.stream.plain_output:
        raise exc
    raise StreamMapFailed(feed.stream.name, exc) from exc
