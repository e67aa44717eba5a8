"""Export file to records: CSV/TSV/SSV rows read by header name, values cast to the schema.

Nothing here knows about HTTP or Singer: a file on disk goes in, typed dicts come out.
Dirty rows never stop the read and are never dropped silently: each problem is counted and
reported with its row number. A file that is not what was asked for (its header lacks a
requested column or names an unknown one, its rows do not fit its header, it holds fewer
or more rows than Marketo counted) is refused with FileRejected: none of it may be taken
as the window's records.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import itertools
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import msgspec
from typing_extensions import override

from tap_marketo_activities.client import excerpt
from tap_marketo_activities.instants import utc_text
from tap_marketo_activities.schema import (
    ALWAYS_PRESENT,
    BASE_COLUMNS,
    EXPORT_COLUMNS,
    ColumnSpec,
    attribute_specs,
    primary_spec,
    type_id_of,
)

logger = logging.getLogger(__name__)

NULL = "null"
DELIMITERS = {"CSV": ",", "TSV": "\t"}
REPORTED_PER_KIND = 5  # each problem kind is logged this often per file, then only counted
PROBE_ROWS = 20  # rows read before the first record, to hold against the header
# Problem kinds: fixed strings, so that the cap above counts each kind once.
WRONG_WIDTH = "cells do not match the header: padded or cut to fit"
UNREADABLE = "unreadable CSV: split on the delimiter"
UNASKED_TYPE = "rows of an activity type that was not asked for: skipped"
NO_GUID = "row without marketoGUID: not deliverable"
INVALID_UTF8 = "invalid UTF-8 replaced by U+FFFD"
BAD_DATE = "activityDate is not an ISO-8601 datetime (kept as it is)"


class CastError(ValueError):
    pass


class FileRejected(ValueError):
    """The file is not what was asked for, or not whole: none of its rows may become the
    window's records, and the window's bookmark must not move."""

    @override
    def __str__(self) -> str:
        return (f"{super().__str__()}. Nothing from its window was bookmarked; run again to "
                "retry it.")


def _to_integer(value: Any) -> int:
    kind = type(value)
    if kind is int:
        return value
    if kind is str:
        return int(value)
    if kind is float and value.is_integer():
        return int(value)
    raise CastError(value)


def _to_number(value: Any) -> float | int:
    kind = type(value)
    if kind is int or kind is float:
        return value
    if kind is str:
        number = float(value)
        if math.isfinite(number):
            return number
    raise CastError(value)


def _to_boolean(value: Any) -> bool:
    if type(value) is bool:
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise CastError(value)


def _to_string(value: Any) -> str:
    if type(value) is str:
        return value
    return json.dumps(value, ensure_ascii=False)


def _to_date(value: Any) -> str:
    dt.date.fromisoformat(value[:10])
    return value[:10]


def _to_datetime(value: Any) -> str:
    return utc_text(value)


# Values JSON already gives in the column's type go into the record as they are.
PASSES_AS_IS: dict[Callable[[Any], Any], tuple[type, ...]] = {
    _to_integer: (int,), _to_number: (int, float), _to_boolean: (bool,), _to_string: (str,)}
_decode_json = msgspec.json.Decoder().decode


def _loads(text: str) -> Any:
    """msgspec's JSON decoder, which gives the values Python's gives, faster; Python's for
    what msgspec refuses (NaN, Infinity, lone surrogates)."""
    try:
        return _decode_json(text)
    except msgspec.MsgspecError:
        return json.loads(text)


def caster(json_type: str, fmt: str | None) -> Callable[[Any], Any]:
    if json_type == "integer":
        return _to_integer
    if json_type == "number":
        return _to_number
    if json_type == "boolean":
        return _to_boolean
    if fmt == "date":
        return _to_date
    if fmt == "date-time":
        return _to_datetime
    return _to_string


class Problems:
    """Counts what was wrong in a file; logs each kind's first few with the row number."""

    def __init__(self, label: str, quiet: bool = False) -> None:
        self.label = label
        self.quiet = quiet  # count only: the file is read again, and reported, later
        self.counts: Counter[str] = Counter()
        self.cast_fields: set[tuple[str, str]] = set()
        self.rows = 0  # data rows read, to hold against the job's numberOfRecords

    def report(self, kind: str, row: int, detail: str = "",
               limit: int = REPORTED_PER_KIND) -> None:
        """`kind` is one of the fixed strings above; what varies goes in `detail`."""
        self.counts[kind] += 1
        if self.counts[kind] <= limit and not self.quiet:
            suffix = f" ({detail})" if detail else ""
            logger.warning("%s, row %d: %s%s", self.label, row, kind, suffix)

    def cast_failed(self, stream: str, column: str, value: Any, row: int) -> None:
        self.counts[f"uncastable {stream}.{column}"] += 1
        if (stream, column) not in self.cast_fields:
            self.cast_fields.add((stream, column))
            logger.warning(
                "%s, row %d: %s.%s: %r is not a valid value for its type; the typed column is "
                "left null and the value stays in `attributes` (reported once per field).",
                self.label, row, stream, column, str(value)[:80],
            )

    def summary(self) -> str:
        return ", ".join(f"{kind}: {n}" for kind, n in sorted(self.counts.items()))


class Columns(NamedTuple):
    """Positions of the export's columns in one file (-1: not in this file), field for field
    in the order of EXPORT_COLUMNS."""

    guid: int
    lead: int
    date: int
    type_id: int
    campaign: int
    primary_id: int
    primary_value: int
    attributes: int
    action: int

    @classmethod
    def from_header(cls, header: list[str], renamed: Mapping[str, str]) -> Columns:
        """`renamed`: field name -> the header text it was given (columnHeaderNames)."""
        where = {name: i for i, name in enumerate(field_names(header, renamed))}
        return cls(*(where.get(name, -1) for name in EXPORT_COLUMNS))


def field_names(header: list[str], renamed: Mapping[str, str]) -> list[str]:
    """The export field each header cell names; spaces around a name do not count (files
    shaped like Marketo's API reference write `, attributes`)."""
    field_of = {text.strip(): name for name, text in renamed.items()}
    return [field_of.get(text.strip(), text.strip()) for text in header]


def check_header(header: list[str], renamed: Mapping[str, str],
                 fields: Iterable[str] | None, label: str) -> Columns:
    """The header's columns, when they are what the job asked for (`fields`; without
    them, the columns every record needs); otherwise FileRejected."""
    names = field_names(header, renamed)
    shown = excerpt(",".join(header))
    unknown = [name for name in names if name not in BASE_COLUMNS]
    if unknown:
        raise FileRejected(f"{label}: the header names a column Marketo does not export "
                           f"({excerpt(unknown[0])!r}; header: {shown!r})")
    if len(set(names)) != len(names):
        raise FileRejected(f"{label}: the header names a column twice (header: {shown!r})")
    missing = [name for name in (fields if fields is not None else sorted(ALWAYS_PRESENT))
               if name not in names]
    if missing:
        raise FileRejected(f"{label}: the header lacks the requested column(s) "
                           f"{', '.join(missing)} (header: {shown!r})")
    return Columns.from_header(header, renamed)


def check_file(path: Path, export_format: str, fields: Iterable[str],
               renamed: Mapping[str, str], label: str) -> None:
    """The checks `read_records` makes before its first record (header, cells of the first
    rows), alone: cheap enough to run on every file as soon as it is downloaded."""
    _checked_rows(path, export_format, Problems(label, quiet=True), renamed, fields)


def check_whole(problems: Problems, expected_records: int | None) -> None:
    """After the whole file was read: its data rows must be Marketo's numberOfRecords
    (when Marketo gave it), or the file is not whole (cut short with nothing else to
    tell): FileRejected, before the window's bookmark moves."""
    if expected_records is not None and problems.rows != expected_records:
        raise FileRejected(f"{problems.label}: Marketo counted {expected_records} records, "
                           f"the file holds {problems.rows} rows, so it is not whole")


class RecordBuilder:
    """Turns the cells of one row of one activity type into a typed record."""

    def __init__(self, stream: str, schema: Mapping[str, Any], selected: set[str] | None) -> None:
        self.stream = stream
        self.type_id = type_id_of(schema)
        wanted = [s for s in attribute_specs(schema) if selected is None or s.column in selected]
        self.attributes = [(s.column, s.source, caster(s.json_type, s.fmt)) for s in wanted]
        primary: ColumnSpec = primary_spec(schema)
        self.primary_cast = caster(primary.json_type, primary.fmt)
        # Base columns always built but not selected (attributes feeds the typed columns).
        self.dropped = [c for c in BASE_COLUMNS - ALWAYS_PRESENT
                        if selected is not None and c not in selected]

    def bind(self, at: Columns, problems: Problems) -> Callable[[list[str], int], dict[str, Any]]:
        """The row-to-record function for one file: column positions, casts and the
        selection are looked up once per file, not once per row."""
        guid, lead, date, campaign = at.guid, at.lead, at.date, at.campaign
        primary_id, primary_value, action, attributes_at = (
            at.primary_id, at.primary_value, at.action, at.attributes)
        type_id, primary_cast, cast = self.type_id, self.primary_cast, self._cast
        integer, utc_date = partial(self._integer, problems), partial(_utc_date, problems)
        add_attributes = self._attribute_adder(problems)
        dropped = self.dropped

        def record_of(cells: list[str], number: int) -> dict[str, Any]:
            when = cells[date] if date >= 0 else None
            if when is not None and when[19:] != "Z":  # instants.is_utc_text, inlined: speed
                when = utc_date(when, number)
            record: dict[str, Any] = {
                "marketoGUID": cells[guid],
                "leadId": integer(cells, lead, "leadId", number),
                "activityDate": when,
                "activityTypeId": type_id,
                "campaignId": integer(cells, campaign, "campaignId", number),
                "primaryAttributeValueId": cast(
                    cells[primary_id] if primary_id >= 0 else None, primary_cast,
                    "primaryAttributeValueId", number, problems),
                "primaryAttributeValue": _none_if_null(
                    cells[primary_value] if primary_value >= 0 else None),
            }
            if action >= 0:
                record["actionResult"] = _none_if_null(cells[action])
            if attributes_at >= 0:
                add_attributes(record, cells[attributes_at], number)
            for column in dropped:
                record.pop(column, None)
            return record

        return record_of

    def bind_rest(self, problems: Problems) -> Callable[[Mapping[str, Any], int], dict[str, Any]]:
        """The item-to-record function of REST answers (Get Lead Activities, Get Deleted
        Leads): the record the same activity's export row gives, field by field, from
        Marketo's JSON values as they are (no text in between). Its attributes, a list of
        {name, value}, become the export's object."""
        primary_cast, cast, stream = self.primary_cast, self._cast, self.stream
        fill = self._attribute_filler(problems)
        dropped = self.dropped

        def integer(item: Mapping[str, Any], column: str, number: int) -> int | None:
            value = item.get(column)
            if value is None or (type(value) is int):
                return value
            try:
                return _to_integer(value) if type(value) is str else int(str(value))
            except ValueError:
                problems.cast_failed(stream, column, value, number)
                return None

        def record_of(item: Mapping[str, Any], number: int) -> dict[str, Any]:
            when = item.get("activityDate")
            if when is not None and (type(when) is not str or when[19:] != "Z"):
                when = _utc_date(problems, str(when), number)
            primary_value = item.get("primaryAttributeValue")
            record: dict[str, Any] = {
                "marketoGUID": _none_or_text(item.get("marketoGUID")),
                "leadId": integer(item, "leadId", number),
                "activityDate": when,
                "activityTypeId": self.type_id,
                "campaignId": integer(item, "campaignId", number),
                "primaryAttributeValueId": cast(
                    item.get("primaryAttributeValueId"), primary_cast,
                    "primaryAttributeValueId", number, problems),
                "primaryAttributeValue": _none_if_null(
                    None if primary_value is None else _to_string(primary_value)),
                "actionResult": None,  # Get Lead Activities has none
            }
            fill(record, _attributes_of(item.get("attributes") or [], number, problems),
                 number)
            for column in dropped:
                record.pop(column, None)
            return record

        return record_of

    def _attribute_adder(self, problems: Problems
                         ) -> Callable[[dict[str, Any], str, int], None]:
        """What puts a row's attributes cell into its record: the cell parsed, and each
        selected attribute cast into its typed column."""
        fill = self._attribute_filler(problems)

        def add(record: dict[str, Any], cell: str, number: int) -> None:
            fill(record, _parse_attributes(cell, number, problems), number)

        return add

    def _attribute_filler(self, problems: Problems
                          ) -> Callable[[dict[str, Any], dict[str, Any] | None, int], None]:
        """What puts an activity's attributes object into its record, with each selected
        attribute cast into its typed column."""
        cast = self._cast
        typed = [(column, source, PASSES_AS_IS.get(attribute_cast), attribute_cast)
                 for column, source, attribute_cast in self.attributes]

        def fill(record: dict[str, Any], attributes: dict[str, Any] | None,
                 number: int) -> None:
            record["attributes"] = attributes
            for column, source, kinds, attribute_cast in typed:
                value = attributes.get(source) if attributes else None
                if value is None or (kinds and type(value) in kinds):
                    record[column] = value  # JSON already typed it
                else:
                    record[column] = cast(value, attribute_cast, column, number, problems)

        return fill

    def _integer(self, problems: Problems, cells: list[str], position: int, column: str,
                 number: int) -> int | None:
        if position < 0:
            return None
        value = cells[position]
        if value == NULL:
            return None
        try:
            return int(value)
        except ValueError:
            problems.cast_failed(self.stream, column, value, number)
            return None

    def _cast(self, value: Any, cast: Callable[[Any], Any], column: str, number: int,
              problems: Problems) -> Any:
        if value is None or value == NULL:
            return None
        try:
            return cast(value)
        except (ValueError, TypeError, AttributeError):
            problems.cast_failed(self.stream, column, value, number)
            return None


def _utc_date(problems: Problems, text: str, number: int) -> str:
    try:
        return utc_text(text)
    except ValueError:
        problems.report(BAD_DATE, number, excerpt(text))
        return text


def attributes_object(pairs: list[Any]) -> dict[str, Any] | None:
    """Attributes written as a list of {name, value} (REST answers, and export files shaped
    like Marketo's API reference) as the export's object: display name -> value. None when
    an item is not such a pair."""
    attributes: dict[str, Any] = {}
    for pair in pairs:
        if type(pair) is not dict or type(pair.get("name")) is not str:
            return None
        attributes[pair["name"]] = pair.get("value")
    return attributes


def _none_if_null(value: str | None) -> str | None:
    return None if value is None or value == NULL else value


def _none_or_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_attributes(text: str | None, number: int, problems: Problems) -> dict | None:
    if text is None or text == NULL or text == "":
        return None
    try:
        value = _loads(text)
    except ValueError:
        problems.report("attributes is not valid JSON; kept as text under `_unparsed`", number)
        return {"_unparsed": text}
    return _attributes_of(value, number, problems)


def _attributes_of(value: Any, number: int, problems: Problems) -> dict | None:
    """Attributes as JSON gives them (an object, or a list of {name, value}) as the
    export's object."""
    if type(value) is list:
        pairs = attributes_object(value)
        if pairs is not None:
            return pairs
    if not isinstance(value, dict):
        problems.report("attributes is not a JSON object or a list of {name, value}; kept "
                        "under `_unparsed`", number)
        return {"_unparsed": value}
    return value


def detect_delimiter(header_line: str, export_format: str) -> str:
    """SSV is documented both as space- and semicolon-separated: the header tells."""
    if export_format in DELIMITERS:
        return DELIMITERS[export_format]
    return ";" if ";" in header_line else " "


def read_rows(path: Path, export_format: str,
              problems: Problems) -> Generator[tuple[int, list[str]], None, None]:
    """The header as row 0, then (row number, cells) for each data row, padded with `null`
    to the header's width."""
    # A 10 KB+ attribute value is real; csv's default limit (128 KB) is not enough for all
    # files. The limit is the process's: setting it again is harmless.
    csv.field_size_limit(sys.maxsize)
    with path.open("rb") as raw:
        lines = _Lines(raw)
        header_line = lines.header()
        delimiter = detect_delimiter(header_line, export_format)
        header = next(csv.reader([header_line], delimiter=delimiter), [])
        yield 0, header
        width = len(header)
        reader = csv.reader(lines, delimiter=delimiter)
        number = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                cells = "".join(lines.record).rstrip("\r\n").split(delimiter)
                problems.report(UNREADABLE, number + 1, excerpt(str(exc)))
            if not cells:  # a blank line is no row
                lines.next_record()
                continue
            number += 1
            problems.rows = number
            if lines.hidden:
                cells = _restore_control_characters(cells, lines.record, number, problems)
            if lines.undecodable:
                problems.report(INVALID_UTF8, number)
            lines.next_record()
            if len(cells) != width:
                problems.report(WRONG_WIDTH, number, f"{len(cells)} where the header has {width}")
                cells = (cells + [NULL] * width)[:width]
            yield number, cells


# csv ends a record at a bare CR outside quotes, and (before Python 3.11) refuses NUL: both
# are hidden from it behind private-use characters and put back in the cells.
_STAND_INS = {"\r": "\ue000", "\x00": "\ue001"}
_HIDE = str.maketrans(_STAND_INS)
_RESTORE = str.maketrans({v: k for k, v in _STAND_INS.items()})


class _Lines:
    """One file's physical lines as csv reads them, each decoded on its own, so that what
    the lines of the record being read held and csv cannot tell (bytes that are not UTF-8,
    a hidden CR or NUL) is known for that row and no other."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.record: list[str] = []  # the physical lines of the record being read
        self.hidden = False
        self.undecodable = False

    def header(self) -> str:
        data = self.raw.readline()
        line = _decoded(data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8)
                        else data)
        self.next_record()
        return line

    def next_record(self) -> None:
        self.record.clear()
        self.hidden = self.undecodable = False

    def __iter__(self) -> Iterator[str]:
        record = self.record
        for data in self.raw:
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError:
                line = _decoded(data)
                self.undecodable = True
            if "\r" in line or "\x00" in line:
                line = self._hide_control_characters(line)
            record.append(line)
            yield line

    def _hide_control_characters(self, line: str) -> str:
        ending = "\r\n" if line.endswith("\r\n") else "\n" if line.endswith("\n") else ""
        body = line[: len(line) - len(ending)]
        if "\r" in body or "\x00" in body:
            self.hidden = True
            return body.translate(_HIDE) + ending
        return line


def _decoded(data: bytes) -> str:
    """UTF-8, each invalid sequence replaced by U+FFFD."""
    return data.decode("utf-8", "replace")


def _restore_control_characters(cells: list[str], record: list[str], number: int,
                                problems: Problems) -> list[str]:
    text = "".join(record)
    if "\ue001" in text:
        problems.report("NUL byte in a value (kept)", number)
    position = text.find("\ue000")
    while position >= 0:
        if text.count('"', 0, position) % 2 == 0:  # outside quotes: not CSV as written
            problems.report("stray CR in an unquoted value (kept)", number)
            break
        position = text.find("\ue000", position + 1)
    return [cell.translate(_RESTORE) if "\ue000" in cell or "\ue001" in cell else cell
            for cell in cells]


def _checked_rows(path: Path, export_format: str, problems: Problems,
                  renamed: Mapping[str, str], fields: Iterable[str] | None
                  ) -> tuple[Columns, Iterator[tuple[int, list[str]]]]:
    """The header's columns and the data rows, once the header and the first rows have
    been held against what was asked (FileRejected otherwise)."""
    rows = read_rows(path, export_format, problems)
    _, header = next(rows)
    at = check_header(header, renamed, fields, problems.label)
    probe = list(itertools.islice(rows, PROBE_ROWS))
    if probe and problems.counts[WRONG_WIDTH] >= len(probe):
        rows.close()
        raise FileRejected(f"{problems.label}: none of the first {len(probe)} rows has the "
                           f"{len(header)} cells of its header "
                           f"({excerpt(','.join(header))!r}), so columns cannot be told apart")
    return at, itertools.chain(probe, rows)


_UNASKED: Any = object()  # a type id with no entry in `builders`


def read_records(
    path: Path,
    export_format: str,
    builders: Mapping[int, RecordBuilder | None],
    problems: Problems,
    renamed: Mapping[str, str] | None = None,
    fields: Iterable[str] | None = None,
) -> Iterator[tuple[RecordBuilder, dict[str, Any]]]:
    """(builder, record) for every row whose activity type has a builder. A type mapped
    to None was asked for but is not needed now (a job of an earlier run that asked for
    more types): its rows are only counted. `fields`: the columns the job asked for.

    Raises FileRejected before the first record when the header is not what was asked
    for, or when none of the first rows has the header's number of cells. Call
    `check_whole` once the rows are read."""
    at, rows = _checked_rows(path, export_format, problems, renamed or {}, fields)
    # Keyed by the type cell's text: no int() per row.
    bound = {str(type_id): (builder, builder.bind(at, problems) if builder else None)
             for type_id, builder in builders.items()}
    get = bound.get
    type_at, guid_at = at.type_id, at.guid
    for number, cells in rows:
        type_cell = cells[type_at]
        builder, record_of = get(type_cell, (_UNASKED, None))
        if record_of is None:
            if builder is not None:  # None: asked for by an earlier run, dropped silently
                problems.report(UNASKED_TYPE, number, f"type {excerpt(type_cell)!r}", limit=1)
            continue
        guid = cells[guid_at]
        if not guid or guid == NULL:
            problems.report(NO_GUID, number)
            continue
        yield builder, record_of(cells, number)
