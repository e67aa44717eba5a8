"""Odd answers of Get Lead Activities, one kind at a time (Sandbox.set_rest_odd): what
Marketo on a bad day, or a proxy in front of it, may answer. Some are malformed (a client
retries, then stops where it knows it is complete); the others are well-formed surprises a
client must normalise or sift (dates with offsets, type ids as text, an activity dated in
the future, repeated, of a type not asked for, a page out of order)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

MALFORMED = ("more_missing", "more_text", "same_token", "same_token_empty", "result_object",
             "item_not_object", "no_guid", "no_date", "no_type")
SURPRISES = ("type_text", "date_plus_0100", "date_minus_0500", "future_last", "repeat_top",
             "other_type", "shuffled")
REST_ODD_KINDS = MALFORMED + SURPRISES
FUTURE = "2099-01-01T00:00:00Z"  # a custom activity's caller may give any date
OFFSETS = {"date_plus_0100": 60, "date_minus_0500": -300}  # minutes east of UTC


@dataclass
class RestOdd:
    """Which odd answer activities.json gives, and what it gave so far."""

    kind: str = ""
    times: int = -1  # answers made odd (-1: every answer from `after` on)
    after: int = 0  # answers served as usual first
    served: int = 0  # answers so far
    odd: int = 0  # answers made odd so far
    first_odd: int | None = None  # the number of the first answer made odd
    last: dict[frozenset[int], dict[str, Any]] = field(default_factory=dict)

    def answer(self, fields: dict[str, Any], sent: str, type_ids: frozenset[int],
               every_type: Callable[[], list[dict[str, Any]]]) -> dict[str, Any]:
        """The envelope's fields (result, nextPageToken, moreResult) as this kind makes
        them; `every_type()`: the same page of the log with every type."""
        self.served += 1
        rows = fields["result"]
        previous = self.last.get(type_ids)
        if rows:
            self.last[type_ids] = rows[-1]
        if not self.kind or self.served <= self.after or 0 <= self.times <= self.odd:
            return fields
        changed = odd_fields(self.kind, dict(fields), sent, type_ids, previous, every_type)
        if changed is None:
            return fields
        self.odd += 1
        self.first_odd = self.served if self.first_odd is None else self.first_odd
        return changed

    def seen(self) -> dict[str, Any]:
        return {"kind": self.kind, "served": self.served, "odd": self.odd,
                "first_odd": self.first_odd}


def odd_fields(kind: str, fields: dict[str, Any], sent: str, type_ids: frozenset[int],
               previous: dict[str, Any] | None,
               every_type: Callable[[], list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The fields with this kind of oddity, or None when this page cannot carry it."""
    if kind in ENVELOPE_KINDS:
        return envelope_oddity(kind, fields, sent)
    rows = odd_rows(kind, list(fields["result"]), type_ids, previous, every_type)
    return None if rows is None else {**fields, "result": rows}


ENVELOPE_KINDS = ("more_missing", "more_text", "same_token", "same_token_empty",
                  "result_object")


def envelope_oddity(kind: str, fields: dict[str, Any], sent: str) -> dict[str, Any] | None:
    more = fields["moreResult"]
    if kind == "more_missing":
        del fields["moreResult"]
    elif kind == "more_text":
        fields["moreResult"] = str(more).lower()
    elif kind == "result_object":
        fields["result"] = {"activities": fields["result"]}
    elif not more:
        return None  # the last page's token is no promise
    else:
        fields["nextPageToken"] = sent
        if kind == "same_token_empty":
            fields["result"] = []
    return fields


def odd_rows(kind: str, rows: list[dict[str, Any]], type_ids: frozenset[int],
             previous: dict[str, Any] | None,
             every_type: Callable[[], list[dict[str, Any]]]) -> list[Any] | None:
    if kind == "future_last":
        return [*rows, future_activity(min(type_ids), previous)]
    if kind == "repeat_top":
        return None if previous is None else [previous, *rows]
    if kind == "other_type":
        other = [a for a in every_type() if a["activityTypeId"] not in type_ids]
        middle = len(rows) // 2
        return [*rows[:middle], other[0], *rows[middle:]] if other else None
    if kind == "shuffled":
        return rows[::-1] if len(rows) > 1 else None
    return changed_items(kind, rows) if rows else None


def changed_items(kind: str, rows: list[dict[str, Any]]) -> list[Any]:
    if kind == "item_not_object":
        return [str(rows[0]["marketoGUID"]), *rows[1:]]
    if kind in ("no_guid", "no_date", "no_type"):
        name = {"no_guid": "marketoGUID", "no_date": "activityDate",
                "no_type": "activityTypeId"}[kind]
        return [{k: v for k, v in rows[0].items() if k != name}, *rows[1:]]
    if kind == "type_text":
        return [{**row, "activityTypeId": str(row["activityTypeId"])} for row in rows]
    if kind in OFFSETS:
        return [{**row, "activityDate": with_offset(row["activityDate"], OFFSETS[kind])}
                for row in rows]
    raise ValueError(f"unknown odd answer {kind!r}; known: {', '.join(REST_ODD_KINDS)}")


def with_offset(text: str, minutes: int) -> str:
    """The same instant written in another UTC offset, as +0100 or -0500."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    local = moment.astimezone(timezone(timedelta(minutes=minutes)))
    return local.strftime("%Y-%m-%dT%H:%M:%S%z")


def future_activity(type_id: int, previous: dict[str, Any] | None) -> dict[str, Any]:
    """An activity dated in the future (a custom activity's caller chose the date)."""
    number = 9_000_000_000 + (int(previous["id"]) if previous else 0)
    return {"id": number, "marketoGUID": str(number), "leadId": 1, "activityDate": FUTURE,
            "activityTypeId": type_id, "primaryAttributeValueId": None,
            "primaryAttributeValue": None}
