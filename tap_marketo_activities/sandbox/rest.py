"""Get Lead Activities (activities.json): Marketo's activity log, paged by token."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .data import MERGE_KEY, Dataset, log_order, to_time
from .jobs import ApiError
from .tokens import Token, decode, encode, numbers

if TYPE_CHECKING:
    from .late import Late

MAX_TYPES = 10


def parse_type_ids(raw: str | None) -> frozenset[int]:
    """1 to 10 integers, comma-separated, or error 1003 as Marketo answers."""
    parts = [part.strip() for part in (raw or "").split(",") if part.strip()]
    if not 1 <= len(parts) <= MAX_TYPES:
        raise ApiError("1003", f"activityTypeIds must hold 1 to {MAX_TYPES} ids")
    try:
        return frozenset(int(part) for part in parts)
    except ValueError:
        raise ApiError("1003", "activityTypeIds must be integers") from None


def rest_form(activity: dict[str, Any]) -> dict[str, Any]:
    """An activity as activities.json serves it: the bulk file's values, attributes as a
    [{name, value}] list, no actionResult."""
    out: dict[str, Any] = {"id": int(activity["marketoGUID"])}
    for name in ("marketoGUID", "leadId", "activityDate", "activityTypeId"):
        out[name] = activity[name]
    # A null campaignId is sent as null on some rows and left out on others.
    if activity["campaignId"] is not None or out["id"] % 2:
        out["campaignId"] = activity["campaignId"]
    out["primaryAttributeValueId"] = activity["primaryAttributeValueId"]
    out["primaryAttributeValue"] = activity["primaryAttributeValue"]
    attributes = [{"name": name, "value": value}
                  for name, value in activity["attributes"].items() if value is not None]
    if attributes:
        out["attributes"] = attributes
    return out


class ActivityLog:
    """Every activity but Delete Lead, in time order; a position is (next main index, next
    merge)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.late: Late | None = None  # activities committed late (late.py), when on

    def position_at(self, instant: datetime) -> tuple[int, int]:
        offset = int((instant - self.dataset.start).total_seconds())
        return self.dataset.first_index_at(offset), self.dataset.merges.first_at(offset)

    def instant_of(self, index: int, merge: int) -> datetime:
        dataset = self.dataset
        offset = min(dataset.offset(index), dataset.merges.offset(merge))
        return dataset.start + timedelta(seconds=offset)

    def position(self, text: str) -> tuple[int, int]:
        token = decode(text)
        found = numbers(token.position, "a")
        if found is None:
            return self.position_at(token.instant)
        if len(found) != 2 or min(found) < 0:
            raise ApiError("1003", "Invalid nextPageToken")
        return found[0], found[1]

    def walk(self, index: int, merge: int, size: int) -> tuple[list[int], int, int, bool]:
        """The next `size` keys of the log that can be seen now, where the walk ends, and
        whether more can be seen."""
        dataset = self.dataset
        span = dataset.visible_span()
        main_end, merge_end = dataset.count_at(span), dataset.merges.count(span)
        main = range(index, min(main_end, index + size))
        merges = [MERGE_KEY + k for k in range(merge, min(merge_end, merge + size))]
        keys = log_order(dataset, main, merges)[:size]
        taken_merges = sum(1 for key in keys if key >= MERGE_KEY)
        index, merge = index + len(keys) - taken_merges, merge + taken_merges
        return keys, index, merge, index < main_end or merge < merge_end

    def page(self, text: str, type_ids: frozenset[int], size: int
             ) -> tuple[list[dict[str, Any]], str, bool]:
        late = self.late
        if late is not None and late.on and late.rest_order == "commit":
            return late.page(text, type_ids, size)
        index, merge = self.position(text)
        keys, index, merge, more = self.walk(index, merge, size)
        if late is not None and late.on:
            keys = late.shown(keys)  # dated here, committed later: passed by for good
        dataset = self.dataset
        rows = [rest_form(dataset.activity(key)) for key in keys
                if dataset.type_id(key) in type_ids and dataset.kept(key)]
        token = Token(self.instant_of(index, merge), f"a{index}.{merge}")
        return rows, encode(token), more

    def expected(self, start: str | datetime, end: str | datetime | None,
                 type_ids: list[int] | None) -> list[dict[str, Any]]:
        """What paging from `start` returns, in order, up to (not including) `end`, or to
        what can be seen now."""
        dataset = self.dataset
        first = to_time(start)
        last = to_time(end) if end is not None else dataset.start + timedelta(
            seconds=dataset.visible_span())
        keys = dataset.keys_between(first, last, end_inclusive=False)
        wanted = frozenset(type_ids) if type_ids else None
        return [rest_form(dataset.activity(key)) for key in keys
                if (wanted is None or dataset.type_id(key) in wanted) and dataset.kept(key)]
