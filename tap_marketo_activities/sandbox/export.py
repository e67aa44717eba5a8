"""Writing an export file: header, quoting, shuffled rows, optional dirty rows, and the
other file shapes Marketo documents (limits.FileShape)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
import threading
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from typing import Any

from .catalog import DELETE_LEAD, activity_types
from .data import MERGE_KEY, Dataset, matches, parse_time
from .limits import FileShape

ALL_FIELDS = ["marketoGUID", "leadId", "activityDate", "activityTypeId", "campaignId",
              "primaryAttributeValueId", "primaryAttributeValue", "attributes", "actionResult"]
DEFAULT_FIELDS = ALL_FIELDS[:8]
DIRTY_KINDS = ["nul", "stray_cr", "unescaped_quote", "invalid_utf8", "broken_json", "short_row"]
VALUE_KINDS = {"nul", "stray_cr", "unescaped_quote", "invalid_utf8"}
DIRTY_EVERY = 32


@dataclass
class ExportSpec:
    indices: range
    fields: list[str]
    header_names: dict[str, str]
    delimiter: str
    type_ids: frozenset[int] | None
    primary_ids: frozenset[Any] | None = None
    primary_values: frozenset[str] | None = None
    shuffle_seed: int = 0
    dirty: bool = False
    defect: str = ""  # limits.FILE_DEFECTS: a file unlike what was asked
    foreign_rows: int = 0  # rows of a type not asked for
    merges: range = range(0)  # Merge Leads activities in the window (Dataset.merge_range)
    shape: FileShape = field(default_factory=FileShape)
    keys: list[int] | None = None  # instead of indices and merges (late.Late.export_keys)


@dataclass
class ExportResult:
    records: int = 0
    size: int = 0
    sha256: str = ""
    dirty: dict[str, str] = field(default_factory=dict)


def cell_text(name: str, value: Any) -> str:
    if value is None:
        return "null"
    if name == "attributes":
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def with_offset(date: str, offset: str) -> str:
    """A `...Z` date written in local time at a UTC offset like "+0000", "+00:00", "-0500"."""
    if not offset:
        return date
    digits = offset[1:].replace(":", "")
    span = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
    zone = timezone(-span if offset[0] == "-" else span)
    return parse_time(date).astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S") + offset


def shaped_value(name: str, value: Any, shape: FileShape) -> Any:
    if name == "activityDate":
        return with_offset(value, shape.date_offset)
    if name == "attributes" and shape.attributes_as_list and value is not None:
        return [{"name": key, "value": item} for key, item in value.items()]
    return value


def shaped(activity: dict[str, Any], shape: FileShape) -> dict[str, Any]:
    return {name: shaped_value(name, value, shape) for name, value in activity.items()}


def header_line(spec: ExportSpec) -> bytes:
    names = [spec.header_names.get(name, name) for name in spec.fields]
    if spec.shape.spaced_header:
        names = names[:1] + [" " + name for name in names[1:]]
    return join_row([quote(name, spec.delimiter) for name in names], spec.delimiter)


def quote(text: str, delimiter: str) -> str:
    if delimiter in text or '"' in text or "\r" in text or "\n" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def join_row(cells: list[str], delimiter: str) -> bytes:
    if cells == [""]:
        cells = ['""']  # a lone empty cell would read back as a blank line
    return (delimiter.join(cells) + "\n").encode("utf-8")


class DirtyPlanner:
    """Decides which rows get which defect, cycling through the kinds the fields allow."""

    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        self.kinds = [kind for kind in DIRTY_KINDS if self.possible(kind)]
        self.pending: list[str] = []
        self.next_kind = 0

    def possible(self, kind: str) -> bool:
        if kind in VALUE_KINDS:
            return "primaryAttributeValue" in self.fields
        if kind == "broken_json":
            return "attributes" in self.fields
        return len(self.fields) >= 3

    def due(self, position: int) -> None:
        if self.kinds and position % DIRTY_EVERY == DIRTY_EVERY // 4:
            self.pending.append(self.kinds[self.next_kind % len(self.kinds)])
            self.next_kind += 1

    def apply(self, activity: dict[str, Any], delimiter: str) -> bytes | None:
        """The dirty line for this row, or None when no defect fits it."""
        if not self.pending:
            return None
        kind = self.pending[0]
        line = make_dirty(kind, activity, self.fields, delimiter)
        if line is not None:
            self.pending.pop(0)
        return line


def plain_enough(value: Any, delimiter: str) -> bool:
    if not isinstance(value, str) or not 3 <= len(value) <= 200:
        return False
    return not any(ch in value for ch in (delimiter, '"', "\r", "\n", "\t", ";", ","))


def make_dirty(kind: str, activity: dict[str, Any], fields: list[str],
               delimiter: str) -> bytes | None:
    cells = [quote(cell_text(name, activity[name]), delimiter) for name in fields]
    if kind == "short_row":
        return join_row(cells[:-2], delimiter)
    if kind == "broken_json":
        attributes = activity["attributes"]
        if not attributes:
            return None
        text = cell_text("attributes", attributes)[:-1]
        cells[fields.index("attributes")] = quote(text, delimiter)
        return join_row(cells, delimiter)
    value = activity["primaryAttributeValue"]
    if not plain_enough(value, delimiter):
        return None
    middle = len(value) // 2
    column = fields.index("primaryAttributeValue")
    if kind == "invalid_utf8":
        marker = "\x00MARK\x00"
        cells[column] = value[:middle] + marker + value[middle:]
        return join_row(cells, delimiter).replace(marker.encode(), b"\xff\xfe")
    broken = {
        "nul": value[:middle] + "\x00" + value[middle:],
        "stray_cr": value[:middle] + "\r" + value[middle:],
        "unescaped_quote": '"' + value[:middle] + '"' + value[middle:] + '"',
    }
    cells[column] = broken[kind]
    return join_row(cells, delimiter)


OWN_FIELDS = ("marketoGUID", "leadId", "activityDate", "campaignId")


class RowWriter:
    """Serialises rows; the quoted cells of each pooled body are computed once."""

    def __init__(self, dataset: Dataset, spec: ExportSpec) -> None:
        self.dataset = dataset
        self.spec = spec
        self.keep: dict[int, bool] = {}
        self.cells: dict[int, list[str]] = {}
        self.own_slots = [(position, OWN_FIELDS.index(name))
                          for position, name in enumerate(spec.fields) if name in OWN_FIELDS]

    def wanted(self, index: int) -> bool:
        spec = self.spec
        if index >= MERGE_KEY:
            return matches(self.dataset.activity(index), spec.type_ids, spec.primary_ids,
                           spec.primary_values)
        number = self.dataset.body_index(index)
        keep = self.keep.get(number)
        if keep is None:
            keep = matches(self.dataset.body(number), spec.type_ids, spec.primary_ids,
                           spec.primary_values)
            self.keep[number] = keep
        return keep

    def body_cells(self, number: int) -> list[str]:
        cells = self.cells.get(number)
        if cells is None:
            body = self.dataset.body(number)
            spec = self.spec
            cells = ["" if name in OWN_FIELDS
                     else quote(cell_text(name, shaped_value(name, body[name], spec.shape)),
                                spec.delimiter)
                     for name in spec.fields]
            self.cells[number] = cells
        return cells

    def line(self, index: int) -> bytes:
        if index >= MERGE_KEY:
            activity = shaped(self.dataset.activity(index), self.spec.shape)
            row = [quote(cell_text(name, activity[name]), self.spec.delimiter)
                   for name in self.spec.fields]
            return self.finish(row)
        row = list(self.body_cells(self.dataset.body_index(index)))
        guid, lead_id, date, campaign = self.dataset.own_fields(index)
        own = (guid, str(lead_id), with_offset(date, self.spec.shape.date_offset),
               "null" if campaign is None else str(campaign))
        for position, slot in self.own_slots:
            row[position] = own[slot]
        return self.finish(row)

    def finish(self, row: list[str]) -> bytes:
        if self.spec.defect == "short_rows":
            row = row[:-1]
        elif self.spec.defect == "long_rows":
            row = [*row, "x"]
        return join_row(row, self.spec.delimiter)


def with_defect(spec: ExportSpec) -> ExportSpec:
    """missing_column: activityDate (or the third column) left out of header and rows;
    unknown_column: one header cell renamed to a name Marketo does not export."""
    if spec.defect == "missing_column":
        dropped = "activityDate" if "activityDate" in spec.fields else spec.fields[2]
        return dataclasses.replace(spec, fields=[f for f in spec.fields if f != dropped])
    if spec.defect == "unknown_column":
        renamed = spec.fields[-1]
        return dataclasses.replace(spec, header_names={**spec.header_names,
                                                       renamed: f"{renamed}_v2"})
    return spec


def foreign_lines(dataset: Dataset, spec: ExportSpec, order: list[int]) -> list[bytes]:
    """Rows of a type the job did not ask for (copies of real rows, with their own ids)."""
    asked = spec.type_ids or frozenset()
    other = next((t["id"] for t in activity_types()
                  if t["id"] not in asked and t["id"] != DELETE_LEAD), 999999)
    lines = []
    for number, index in enumerate(order[: spec.foreign_rows]):
        activity = shaped({**dataset.activity(index), "activityTypeId": other,
                           "marketoGUID": f"99{number:08d}"}, spec.shape)
        lines.append(join_row([quote(cell_text(name, activity[name]), spec.delimiter)
                               for name in spec.fields], spec.delimiter))
    return lines


def write_export(dataset: Dataset, spec: ExportSpec, path: str,
                 cancelled: threading.Event) -> ExportResult | None:
    """Write the file; None when cancelled part way."""
    result = ExportResult()
    digest = hashlib.sha256()
    spec = with_defect(spec)
    writer = RowWriter(dataset, spec)
    keys = spec.keys if spec.keys is not None else itertools.chain(
        spec.indices, (MERGE_KEY + k for k in spec.merges))
    order = [key for key in keys if writer.wanted(key) and dataset.kept(key)]
    random.Random(spec.shuffle_seed).shuffle(order)
    planner = DirtyPlanner(spec.fields) if spec.dirty else None
    with open(path, "wb") as out:
        chunk = [header_line(spec)]
        if spec.foreign_rows:
            chunk += foreign_lines(dataset, spec, order)
            result.records += len(chunk) - 1
        for index in order:
            line = dirty_line(dataset, index, spec, planner, result) if planner else None
            chunk.append(line or writer.line(index))
            result.records += 1
            if len(chunk) >= 4000:
                if cancelled.is_set():
                    return None
                flush(out, chunk, digest, result)
        flush(out, chunk, digest, result)
    result.sha256 = digest.hexdigest()
    return result


def dirty_line(dataset: Dataset, index: int, spec: ExportSpec, planner: DirtyPlanner,
               result: ExportResult) -> bytes | None:
    planner.due(result.records)
    if not planner.pending:
        return None
    kind = planner.pending[0]
    activity = shaped(dataset.activity(index), spec.shape)
    line = planner.apply(activity, spec.delimiter)
    if line is not None:
        result.dirty[activity["marketoGUID"]] = kind
    return line


def flush(out: Any, chunk: list[bytes], digest: Any, result: ExportResult) -> None:
    data = b"".join(chunk)
    out.write(data)
    digest.update(data)
    result.size += len(data)
    chunk.clear()
