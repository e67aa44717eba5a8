"""Deterministic activities, computed from their index so any range is cheap."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from .catalog import generated_types
from .dice import MASK, Dice, mix
from .merges import Merges

if TYPE_CHECKING:
    from .purge import Purge

DAY = 86400
MAIN_FIRST_GUID = 700000000  # marketoGUID of main-series activity 0, give or take the seed
MERGE_KEY = 1 << 40  # key of merge k: MERGE_KEY + k; keys below it are main-series indices
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:?\d{2})$")

LONG_VALUE = ("Long value; with \"quotes\", commas,\ttabs and\r\nnewlines. " * 400)[:20500]
HOSTILE_VALUES = [
    "a,b,c",
    "semi;colon;separated",
    "tab\tseparated\tvalue",
    "  padded with spaces  ",
    'she said "hello"',
    '"',
    "carriage\rreturn",
    "line\nfeed",
    "crlf\r\nline",
    "trailing newline\n",
    "Ação, café, naïve, Zürich",
    "中文字符 日本語 한국어",
    "emoji 🎉🚀👍🏽",
    "RTL שלום עולם مرحبا",
    "",
    " ",
    "NULL",
    "\\N",
    "mixed, \"quoted\"; tab\t and \r\n all",
]

LEAD_FIELDS = [(31, "Email Address"), (44, "Lead Score"), (57, "Job Title"),
               (62, "Behavior Score"), (80, "Lead Status")]
LISTS = [(2001, "Webinar, Q1.Attendees"), (2002, "Café Program.VIP List"),
         (2003, "Newsletter.Subscribers"), (2004, "Trade Show; Berlin.Scanned")]
PROGRAMS = [(3569, "SuccessWebCPS"), (3570, "Webinar 2024 Q1"),
            (3571, "Trade Show, Berlin"), (3572, "Nurture \"Gold\" Track")]
FORMS = [(1001, "Contact Us.Form"), (1002, "Webinar 2024 Q1.Registration Form"),
         (1003, "Gated Content.Download Form")]
PRIMARY_POOLS: dict[int, list[tuple[int, str]]] = {
    2: FORMS, 13: LEAD_FIELDS, 22: LEAD_FIELDS, 24: LISTS, 25: LISTS, 104: PROGRAMS,
}
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) Safari/604.1",
    "curl/8.4.0",
]
STRING_TYPES = {"string", "text"}


def parse_time(value: str) -> datetime:
    """Parse ISO-8601 with Z or an offset and no fraction; raise ValueError otherwise."""
    if not isinstance(value, str) or not TIME_RE.match(value):
        raise ValueError(f"Invalid datetime {value!r}")
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def to_time(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    return parse_time(value)


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


BODY_BITS = 13
BODY_POOL = 1 << BODY_BITS
BODY_FIELDS = ("activityTypeId", "primaryAttributeValueId", "primaryAttributeValue",
               "attributes", "actionResult")
class Dataset:
    """Activity i happens at data_start + floor(i * 86400 / activities_per_day) seconds.

    Each row's own fields (guid, lead, date, campaign) come from a hash of i; the rest
    (type, primary attribute, attributes, result) is one of BODY_POOL cached bodies, so
    that half a million rows cost seconds, not minutes.
    """

    def __init__(self, seed: int, data_start: str | datetime, data_end: str | datetime | None,
                 activities_per_day: int, merge_ids: str = "brackets",
                 bad_merge_ids_every: int = 0) -> None:
        self.seed = seed
        self.start = to_time(data_start)
        # No data_end: live data, running up to the clock (only past seconds are visible).
        self.live = data_end is None
        self.end = datetime.now(timezone.utc) if data_end is None else to_time(data_end)
        self.per_day = max(1, int(activities_per_day))
        self.span = int((self.end - self.start).total_seconds())  # values' dates stay in it
        self.types = generated_types()
        self.salt = mix(seed) & 0xFFFFFFFF
        self.bodies: dict[int, dict[str, Any]] = {}
        self.day_prefixes: dict[int, str] = {}
        self.clocks: dict[int, str] = {}
        self.midnight = self.start.replace(hour=0, minute=0, second=0)
        self.start_second = int((self.start - self.midnight).total_seconds())
        self.merges = Merges(seed, self.per_day, self.date_text, merge_ids, bad_merge_ids_every)
        self.clock: datetime | None = None  # the sandbox's clock, when a test sets it
        self.purge: Purge | None = None  # Marketo's purge (purge.py), when on

    def kept(self, key: int) -> bool:
        """Not deleted by Marketo's purge (always, with the purge off)."""
        return self.purge is None or self.purge.kept(key)


    def visible_span(self) -> int:
        """Seconds from data_start to the end of what can be seen now."""
        span = self.span if not self.live else int(
            (datetime.now(timezone.utc) - self.start).total_seconds())
        if self.clock is not None:
            span = min(span, max(0, int((self.clock - self.start).total_seconds())))
        return span

    def count_at(self, span: int) -> int:
        return max(0, (span * self.per_day + DAY - 1) // DAY)

    @property
    def count(self) -> int:
        """Activities of the main series that can be seen now."""
        return self.count_at(self.visible_span())

    def first_index_at(self, offset: int) -> int:
        """The first main-series index at or after `offset`, seen or not yet."""
        if offset <= 0:
            return 0
        bound = range(self.count_at(offset) + 2)
        return bisect.bisect_left(bound, offset, key=self.offset)

    def offset(self, index: int) -> int:
        # Some activities share the second of the one before; midnight slots stay exact.
        if index % 13 == 7 and index % self.per_day != 0:
            index -= 1
        return index * DAY // self.per_day

    def index_range(self, start: datetime, end: datetime, end_inclusive: bool) -> range:
        start_off = int((start - self.start).total_seconds())
        end_off = int((end - self.start).total_seconds())
        positions = range(self.count)
        low = bisect.bisect_left(positions, start_off, key=self.offset)
        if end_inclusive:
            high = bisect.bisect_right(positions, end_off, key=self.offset)
        else:
            high = bisect.bisect_left(positions, end_off, key=self.offset)
        return range(low, max(low, high))

    def merge_range(self, start: datetime, end: datetime, end_inclusive: bool) -> range:
        """Merges (k, not keys) in the window, as index_range for the main series."""
        start_off = int((start - self.start).total_seconds())
        end_off = int((end - self.start).total_seconds()) + (1 if end_inclusive else 0)
        visible = self.merges.count(self.visible_span())
        low = min(visible, self.merges.first_at(start_off))
        return range(low, max(low, min(visible, self.merges.first_at(end_off))))

    def keys_between(self, start: datetime, end: datetime, end_inclusive: bool) -> list[int]:
        """Keys of every activity in the window, in the activity log's order."""
        merges = self.merge_range(start, end, end_inclusive)
        return log_order(self, self.index_range(start, end, end_inclusive),
                         [MERGE_KEY + k for k in merges])

    def key_offset(self, key: int) -> int:
        if key >= MERGE_KEY:
            return self.merges.offset(key - MERGE_KEY)
        return self.offset(key)

    def body_index(self, index: int) -> int:
        # Fibonacci hashing: one multiply is enough to scatter rows over the pool.
        return ((index * 0x9E3779B97F4A7C15 + self.salt) & MASK) >> (64 - BODY_BITS)

    def body(self, number: int) -> dict[str, Any]:
        body = self.bodies.get(number)
        if body is None:
            dice = Dice(self.seed, number, "body")
            activity_type = self.types[dice.pick(len(self.types))]
            body = RowMaker(self, dice, number).build(activity_type)
            self.bodies[number] = body
        return body

    def type_id(self, index: int) -> int:
        if index >= MERGE_KEY:
            return int(self.merges.activity(index - MERGE_KEY)["activityTypeId"])
        return self.body(self.body_index(index))["activityTypeId"]

    def own_fields(self, index: int) -> tuple[str, int, str, int | None]:
        """marketoGUID, leadId, activityDate and campaignId of row `index`."""
        bits = mix(index ^ (self.salt << 24) ^ 0x5DEECE66D)
        campaign = None if bits % 4 == 0 else 1000 + (bits >> 2) % 20000
        lead_id = 100000 + (bits >> 20) % 900000
        guid = str(MAIN_FIRST_GUID + index * 7 + self.seed % 7)
        return guid, lead_id, self.date_text(self.offset(index)), campaign

    def date_text(self, offset: int) -> str:
        day, second = divmod(self.start_second + offset, DAY)
        prefix = self.day_prefixes.get(day)
        if prefix is None:
            prefix = (self.midnight + timedelta(days=day)).strftime("%Y-%m-%dT")
            self.day_prefixes[day] = prefix
        clock = self.clocks.get(second)
        if clock is None:
            hours, rest = divmod(second, 3600)
            clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}Z"
            self.clocks[second] = clock
        return prefix + clock

    def activity(self, index: int) -> dict[str, Any]:
        if index >= MERGE_KEY:
            return self.merges.activity(index - MERGE_KEY)
        guid, lead_id, date, campaign = self.own_fields(index)
        body = self.body(self.body_index(index))
        return {
            "marketoGUID": guid,
            "leadId": lead_id,
            "activityDate": date,
            "activityTypeId": body["activityTypeId"],
            "campaignId": campaign,
            "primaryAttributeValueId": body["primaryAttributeValueId"],
            "primaryAttributeValue": body["primaryAttributeValue"],
            "attributes": dict(body["attributes"]),
            "actionResult": body["actionResult"],
        }

    def activities(self, indices: Iterable[int]) -> Iterator[dict[str, Any]]:
        for index in indices:
            yield self.activity(index)

    def random_date(self, dice: Dice) -> datetime:
        return self.start + timedelta(seconds=dice.pick(max(1, self.span)))


def log_order(dataset: Dataset, main: Iterable[int], merges: list[int]) -> list[int]:
    """Main-series indices and merge keys, each in order, merged by time (main first on a
    tie): the order of Marketo's activity log."""
    out: list[int] = []
    pending = iter(merges)
    merge = next(pending, None)
    for index in main:
        at = dataset.offset(index)
        while merge is not None and dataset.key_offset(merge) < at:
            out.append(merge)
            merge = next(pending, None)
        out.append(index)
    if merge is not None:
        out.append(merge)
        out.extend(pending)
    return out


class RowMaker:
    """Builds one body of the pool; keeps state such as whether values are hostile."""

    def __init__(self, dataset: Dataset, dice: Dice, number: int) -> None:
        self.dataset = dataset
        self.dice = dice
        self.hostile = dice.chance(1, 8)
        # Long values are rare so that big exports stay a sane size.
        self.long_left = 2 if number % 1999 == 3 else 0

    def build(self, activity_type: dict[str, Any]) -> dict[str, Any]:
        primary_id, primary_value = self.primary(activity_type)
        return {
            "activityTypeId": activity_type["id"],
            "primaryAttributeValueId": primary_id,
            "primaryAttributeValue": primary_value,
            "attributes": self.attributes(activity_type),
            "actionResult": self.action_result(),
        }

    def action_result(self) -> str:
        roll = self.dice.pick(40)
        if roll == 0:
            return "failed"
        return "skipped" if roll < 3 else "succeeded"

    def primary(self, activity_type: dict[str, Any]) -> tuple[Any, str | None]:
        type_id = activity_type["id"]
        if "primaryAttribute" not in activity_type:
            return None, None
        pool = PRIMARY_POOLS.get(type_id)
        if pool:
            return pool[self.dice.pick(len(pool))]
        number = 1 + self.dice.pick(400)
        if activity_type["primaryAttribute"]["dataType"] == "string":
            return f"TS-2024-{number:03d}", self.text(f"Trade Show {number}")
        if self.dice.chance(1, 20):
            return number, None
        return number, self.text(asset_name(type_id, number))

    def text(self, plain: str) -> str:
        if self.long_left:
            self.long_left -= 1
            return LONG_VALUE
        if self.hostile and self.dice.chance(2, 3):
            return HOSTILE_VALUES[self.dice.pick(len(HOSTILE_VALUES))]
        return plain

    def attributes(self, activity_type: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for attribute in activity_type.get("attributes", []):
            if self.dice.chance(1, 16):
                continue
            values[attribute["name"]] = self.value(attribute["name"], attribute["dataType"])
        if self.dice.chance(1, 20):
            values["Undeclared Attribute"] = self.text(f"extra {self.dice.pick(100)}")
        return values

    def value(self, name: str, data_type: str) -> Any:
        number = self.dice.pick(100000)
        if data_type in STRING_TYPES:
            return self.text(plain_string(name, number))
        return typed_value(self.dataset, self.dice, data_type, number)


def typed_value(dataset: Dataset, dice: Dice, data_type: str, number: int) -> Any:
    if data_type in ("integer", "score", "reference"):
        return number
    if data_type in ("float", "currency", "percent"):
        return number / 100
    if data_type == "boolean":
        return number % 2 == 1
    if data_type == "date":
        return dataset.random_date(dice).strftime("%Y-%m-%d")
    if data_type == "datetime":
        return format_time(dataset.random_date(dice))
    if data_type == "email":
        return f"person{number}@example.com"
    if data_type == "phone":
        return f"+1-555-{number % 10000:04d}"
    if data_type in ("url", "link"):
        return f"https://www.example.com/p/{number}?utm_source=sandbox"
    return f"{number % 90 - 45}.{number % 997},{number % 360 - 180}.{number % 991}"


def plain_string(name: str, number: int) -> str:
    if name == "Client IP Address":
        return f"10.{number % 256}.{number // 256 % 256}.{number % 7 + 1}"
    if name == "User Agent":
        return USER_AGENTS[number % len(USER_AGENTS)]
    if name.endswith("URL"):
        return f"https://www.example.com/page-{number % 300}"
    if name == "Query Parameters":
        return f"utm_campaign=c{number % 40}&utm_medium=email"
    return f"{name} {number % 97}"


def asset_name(type_id: int, number: int) -> str:
    if type_id == 1:
        return f"www.example.com/page-{number}"
    if type_id == 3:
        return f"https://www.example.com/link/{number}"
    if type_id in (100002, 100003):
        return f"Zoom Webinar {number}"
    if type_id == 46:
        return f"Milestone {number}"
    return f"Newsletter {number % 12}.Email {number}"


def matches(activity: dict[str, Any], type_ids: frozenset[int] | None,
            primary_ids: frozenset[Any] | None, primary_values: frozenset[str] | None) -> bool:
    if type_ids is not None and activity["activityTypeId"] not in type_ids:
        return False
    if primary_ids is not None and activity["primaryAttributeValueId"] not in primary_ids:
        return False
    return primary_values is None or activity["primaryAttributeValue"] in primary_values
