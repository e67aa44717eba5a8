"""The SDK's private and `@final` members the tap overrides or reads, one test each.

The tap drives each stream's SDK record loop itself (sync.py) and overrides a few SDK
internals. None of them is a public API: an SDK release may rename or reshape one. Each
test here names one member and checks the shape the tap relies on, so that an upgrade
fails a named test instead of a whole sync (or, worse, a sync that seems to work).
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from singer_sdk import Stream, Tap
from singer_sdk.exceptions import AbortedSyncFailedException, AbortedSyncPausedException
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.singerlib import RecordMessage, SchemaMessage

from tap_marketo_activities.delivery import RecordPath, Window
from tap_marketo_activities.records import RecordBuilder
from tap_marketo_activities.schema import KEY, REPLICATION_KEY, activity_schema
from tap_marketo_activities.settings import SettingsError
from tap_marketo_activities.streams import ActivityStream
from tap_marketo_activities.tap import TapMarketoActivities

NAME = "activities_visit_webpage"
CONFIG = {"client_id": "a", "client_secret": "b", "base_url": "http://127.0.0.1:1",
          "start_date": "2024-01-01"}


def catalog() -> dict[str, Any]:
    schema = activity_schema({"id": 1, "name": "Visit Webpage", "attributes": [
        {"name": "Client IP Address", "dataType": "string"}]})
    return {"streams": [{
        "tap_stream_id": NAME, "stream": NAME, "schema": schema,
        "replication_key": REPLICATION_KEY, "key_properties": [KEY],
        "metadata": [{"breadcrumb": [], "metadata": {
            "selected": True, "replication-key": REPLICATION_KEY,
            "replication-method": "INCREMENTAL"}}],
    }]}


@pytest.fixture
def make_tap() -> Iterator[Callable[..., TapMarketoActivities]]:
    """Real taps built from a catalog (no call to Marketo); their signal handlers undone."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def make(**settings: Any) -> TapMarketoActivities:
        return TapMarketoActivities(config={**CONFIG, **settings}, catalog=catalog(),
                                    parse_env_config=False)
    try:
        yield make
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


@pytest.fixture
def tap(make_tap: Callable[..., TapMarketoActivities]) -> TapMarketoActivities:
    return make_tap()


@pytest.fixture
def stream(tap: TapMarketoActivities) -> ActivityStream:
    found = tap.streams[NAME]
    assert isinstance(found, ActivityStream)
    return found


@pytest.fixture
def written(tap: TapMarketoActivities, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every message the tap writes (RECORD, SCHEMA, BATCH), and "STATE" for each state."""
    messages: list[Any] = []
    monkeypatch.setattr(tap, "write_message", messages.append)
    monkeypatch.setattr(tap.message_writer, "write_record", lambda framing, record: messages
                        .append(RecordMessage(stream=NAME, record=record)))
    monkeypatch.setattr(tap.state_writer, "write_state", lambda state: messages.append("STATE"))
    return messages


def record(guid: str) -> dict[str, Any]:
    return {KEY: guid, REPLICATION_KEY: "2024-01-02T00:00:00Z", "activityTypeId": 1}


def parameters(function: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(function).parameters)


def spy(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[Any]:
    """Wraps `cls.name` so that each call is listed (its instance), still doing its work."""
    calls: list[Any] = []
    original = getattr(cls, name)

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)
    return calls


def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str,
            *options: str) -> list[Any]:
    """Runs the SDK's command line with CONFIG and the catalog, `TapMarketoActivities.name`
    replaced by a recorder: the taps it was called on (no call to Marketo). Callers ask
    for `make_tap`, whose teardown undoes the signal handlers the CLI's tap installs."""
    calls: list[Any] = []
    monkeypatch.setattr(TapMarketoActivities, name, lambda self, *args: calls.append(self))
    config, catalog_file = tmp_path / "config.json", tmp_path / "catalog.json"
    config.write_text(json.dumps(CONFIG))
    catalog_file.write_text(json.dumps(catalog()))
    result = CliRunner().invoke(TapMarketoActivities.cli,
                                ["--config", str(config), "--catalog", str(catalog_file),
                                 *options])
    assert result.exit_code == 0, result.output
    return calls


# -- Stream -------------------------------------------------------------------------------

def test_stream_sync_records(stream: ActivityStream, written: list[Any]) -> None:
    """sync.py drives `Stream._sync_records` one record at a time: a generator that pulls
    one record from `get_records`, writes its RECORD message (unless `write_messages` is
    False, for BATCH), and only then yields it."""
    assert inspect.isgeneratorfunction(Stream._sync_records)
    write_messages = parameters(Stream._sync_records)["write_messages"]
    assert write_messages.kind is inspect.Parameter.KEYWORD_ONLY
    assert write_messages.default is True
    stream.fed = record("a")
    loop = stream._sync_records(write_messages=True)
    assert next(loop) is stream.fed
    assert [m.record[KEY] for m in written if isinstance(m, RecordMessage)] == ["a"]
    stream.fed = None
    assert list(loop) == []


def test_stream_write_state_message(stream: ActivityStream, written: list[Any],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """ActivityStream overrides `Stream._write_state_message()`, which the SDK's record loop
    calls every STATE_MSG_FREQUENCY records and at its end (and `_abort_sync` on --test's
    limit): for a bulk stream the one pass writes every STATE itself, one per window."""
    assert list(parameters(Stream._write_state_message)) == ["self"]
    calls = spy(monkeypatch, ActivityStream, "_write_state_message")
    stream.fed = record("a")
    loop = stream._sync_records()
    next(loop)
    stream.fed = None
    list(loop)
    assert calls, "the SDK's record loop no longer calls _write_state_message"
    calls.clear()
    with pytest.raises((AbortedSyncFailedException, AbortedSyncPausedException)):
        stream._abort_sync(RuntimeError("--test's record limit"))
    assert calls, "Stream._abort_sync no longer calls _write_state_message"
    assert "STATE" not in written


def test_stream_sync_records_without_messages(stream: ActivityStream,
                                               written: list[Any]) -> None:
    """With `write_messages=False` (BATCH) the loop yields records and writes nothing:
    sync.Batches writes them as batch files."""
    stream.fed = record("a")
    loop = stream._sync_records(write_messages=False)
    assert next(loop)[KEY] == "a"
    stream.fed = None
    list(loop)
    assert written == []


def test_stream_write_schema_message(stream: ActivityStream, written: list[Any]) -> None:
    """sync.py writes each stream's SCHEMA itself, before its first record, with
    `Stream._write_schema_message()` (no arguments)."""
    assert list(parameters(Stream._write_schema_message)) == ["self"]
    stream._write_schema_message()
    assert [m.stream for m in written if isinstance(m, SchemaMessage)] == [NAME]


def test_stream_write_batch_message() -> None:
    """sync.Batches writes each BATCH message with
    `Stream._write_batch_message(encoding=..., manifest=...)`."""
    names = parameters(Stream._write_batch_message)
    assert list(names) == ["self", "encoding", "manifest"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in names.values())


def test_stream_write_record_message(tap: TapMarketoActivities,
                                     capsysbinary: pytest.CaptureFixture[bytes],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """ActivityStream overrides `Stream._write_record_message(record)`, which the SDK's
    record loop calls once per record to write it: without stream maps, the override
    writes the RECORD line straight into the output buffer, and the line must be the one
    the SDK's own message would give."""
    assert list(parameters(Stream._write_record_message)) == ["self", "record"]
    calls = spy(monkeypatch, ActivityStream, "_write_record_message")
    stream = tap.streams[NAME]
    assert isinstance(stream, ActivityStream)
    stream.fed = record("a")
    next(stream._sync_records())
    assert len(calls) == 1, "the SDK's record loop no longer calls _write_record_message"
    tap.flush_output()
    line = json.loads(capsysbinary.readouterr().out.splitlines()[-1])
    sdk = RecordMessage(stream=NAME, record=record("a"), time_extracted=stream.extracted_at)
    assert line == json.loads(tap.message_writer.format_message(sdk))


def test_stream_increment_stream_state(stream: ActivityStream, written: list[Any]) -> None:
    """ActivityStream overrides `Stream._increment_stream_state(latest_record, *,
    context)` with nothing, so that the SDK never moves a bookmark (or a progress
    marker) per record: rows of an export file are unsorted, bookmarks move per window."""
    names = parameters(Stream._increment_stream_state)
    assert list(names) == ["self", "latest_record", "context"]
    assert names["context"].kind is inspect.Parameter.KEYWORD_ONLY
    stream.fed = record("a")
    loop = stream._sync_records()
    next(loop)
    stream.fed = None
    list(loop)
    assert "replication_key_value" not in stream.stream_state
    assert "progress_markers" not in stream.stream_state


def test_stream_write_starting_replication_value(
        stream: ActivityStream, written: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    """ActivityStream overrides `Stream._write_starting_replication_value(context)`, which
    the SDK's record loop calls when it starts and which logs 'Starting incremental sync of
    ... with bookmark value': in the one pass the loop starts after earlier windows moved
    the bookmark, so that line would name where the run ended (sync.OnePass._log_resume
    says where each stream resumes instead)."""
    assert list(parameters(Stream._write_starting_replication_value)) == ["self", "context"]
    stream.stream_state.update(replication_key=REPLICATION_KEY,
                               replication_key_value="2024-02-01T00:00:00Z")
    caplog.set_level("INFO")
    stream.fed = record("a")
    loop = stream._sync_records()
    next(loop)
    stream.fed = None
    list(loop)
    assert "Starting incremental sync" not in caplog.text
    assert "starting_replication_value" not in stream.stream_state


def test_stream_abort_at_record_count(stream: ActivityStream, written: list[Any]) -> None:
    """`--test` sets `Stream.ABORT_AT_RECORD_COUNT` (TapMarketoActivities.run_sync_dry_run,
    as the SDK's own does); the SDK's record loop then raises one of the aborted-sync
    exceptions that sync.py catches once a stream has that many records."""
    assert "ABORT_AT_RECORD_COUNT" in vars(Stream)
    stream.ABORT_AT_RECORD_COUNT = 1
    stream.fed = record("a")
    loop = stream._sync_records()
    next(loop)
    stream.fed = record("b")
    with pytest.raises((AbortedSyncPausedException, AbortedSyncFailedException)):
        next(loop)


def test_stream_stream_maps_plain(stream: ActivityStream) -> None:
    """ActivityStream.plain_output takes a stream without stream maps or flattening to be
    one `SameRecordTransform` with `flattening_enabled` False (then it builds RECORD
    messages itself)."""
    maps = stream.stream_maps
    assert len(maps) == 1 and type(maps[0]) is SameRecordTransform
    assert maps[0].flattening_enabled is False


def test_stream_batch_config(make_tap: Callable[..., TapMarketoActivities]) -> None:
    """sync.py types a stream's batch settings as `singer_sdk.helpers._batch.BatchConfig`
    (the SDK has no public path for it), as `Stream.get_batch_config` returns it, and
    reads its `batch_size` and `encoding`."""
    from singer_sdk.helpers._batch import BatchConfig

    tap = make_tap(batch_config={
        "encoding": {"format": "jsonl", "compression": "gzip"},
        "storage": {"root": "file:///tmp", "prefix": "x-"}, "batch_size": 7})
    batch = tap.streams[NAME].get_batch_config(tap.config)
    assert isinstance(batch, BatchConfig)
    assert batch.batch_size == 7
    assert batch.encoding.format == "jsonl"


# -- Tap ------------------------------------------------------------------------------------

def test_tap_validate_config(make_tap: Callable[..., TapMarketoActivities]) -> None:
    """TapMarketoActivities overrides `Tap._validate_config(*, raise_errors)`, which the
    SDK calls while the tap is built, to check settings beyond the JSON schema and fail
    with one line (SettingsError) before any call."""
    names = parameters(Tap._validate_config)
    assert names["raise_errors"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(Tap._validate_config).return_annotation in ("list[str]",
                                                                         list[str])
    with pytest.raises(SettingsError, match="window_days is 0; it accepts"):
        make_tap(window_days=0)
    with pytest.raises(SettingsError, match="base_url"):  # beyond the schema
        make_tap(base_url="mailto:x@y")


def test_tap_handle_termination(tap: TapMarketoActivities) -> None:
    """TapMarketoActivities overrides `Tap._handle_termination(signum, frame)`, which the
    SDK installs for SIGINT and SIGTERM when the tap is built: the tap's unwinds through
    the sync's `finally` (state, then cancelling jobs) where the SDK's exits 0."""
    assert list(parameters(Tap._handle_termination)) == ["self", "signum", "frame"]
    assert signal.getsignal(signal.SIGTERM) == tap._handle_termination
    assert signal.getsignal(signal.SIGINT) == tap._handle_termination


def test_tap_sync_all(make_tap: Any, monkeypatch: pytest.MonkeyPatch,
                      tmp_path: Path) -> None:
    """`Tap.sync_all` is `@final` in the SDK, yet the tap overrides it (one pass for all
    streams, not stream after stream): the SDK's CLI must still start a sync by calling
    `tap.sync_all()` with no arguments."""
    assert list(parameters(Tap.sync_all)) == ["self"]
    calls = run_cli(monkeypatch, tmp_path, "sync_all")
    assert len(calls) == 1 and isinstance(calls[0], TapMarketoActivities)


def test_tap_run_connection_test(make_tap: Any, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    """`Tap.run_connection_test` is `@final`, overridden so that `--test` exports only the
    last day: the SDK's `--test` option must still call `tap.run_connection_test()`."""
    assert list(parameters(Tap.run_connection_test)) == ["self"]
    monkeypatch.setattr(TapMarketoActivities, "discover_streams", lambda self: [])
    calls = run_cli(monkeypatch, tmp_path, "run_connection_test", "--test")
    assert len(calls) == 1 and isinstance(calls[0], TapMarketoActivities)


def test_tap_run_sync_dry_run() -> None:
    """`Tap.run_sync_dry_run(dry_run_record_limit, streams)` is `@final`, overridden to run
    the one pass with a record limit per stream; the SDK's test helpers call it with these
    two parameters."""
    names = parameters(Tap.run_sync_dry_run)
    assert list(names) == ["self", "dry_run_record_limit", "streams"]
    ours = parameters(TapMarketoActivities.run_sync_dry_run)
    assert list(ours) == list(names)
    assert [p.default for p in ours.values()] == [p.default for p in names.values()]


def test_stream_sync_records_errors_are_told_from_a_sources(
        stream: ActivityStream, written: list[Any]) -> None:
    """Issue 23, corner 8: the record path names a failure after its stream only when the
    SDK's record loop (`_sync_records`, with its maps) raised it; an error the source
    raises passes as it is, not as 'the stream map failed'."""
    builder = stream.builder()
    window = Window(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
                    dt.datetime(2024, 1, 3, tzinfo=dt.timezone.utc))

    def rows() -> Iterator[tuple[RecordBuilder, dict[str, Any]]]:
        yield builder, record("1")
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        RecordPath(None).deliver(rows(), {builder: stream}, window)
    assert any(isinstance(m, RecordMessage) for m in written), "the row before it went out"
