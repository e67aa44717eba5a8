"""Activities that arrive late: committed to the activity log after their activityDate.

Marketo commits a Send Email only once the mail server has sent it (minutes late), logs a
known lead's earlier Munchkin visits with their own dates (hours to days late), and takes
custom activities with any date. With `on`, some activities here get a delay:

- Send Email (6): one in three, 1 to 20 minutes;
- Visit Webpage (1): one in eight, 1 to 6 hours;
- Attended Trade Show (100001, a custom type): one in four, 1 to 12 hours.

An activity's commit time is its activityDate plus its delay; before its commit time (at the
sandbox's clock, `Dataset.visible_span`) no endpoint shows it. Two facts Marketo does not
document are switches: whether the bulk filter `createdAt` selects by activityDate or by
commit time (`bulk_by`), and whether Get Lead Activities pages in activityDate order or in
commit order (`rest_order`; a paging token from sinceDatetime X then starts at commit time X).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .data import MAIN_FIRST_GUID, MERGE_KEY, Dataset, format_time, to_time
from .dice import mix
from .jobs import ApiError
from .merges import FIRST_GUID
from .rest import rest_form
from .tokens import Token, decode, encode, numbers

SEND_EMAIL, VISIT_WEBPAGE, TRADE_SHOW = 6, 1, 100001
MINUTE, HOUR = 60, 3600
# type id: (one in N is late, least delay, most delay), in seconds
DELAYS = {SEND_EMAIL: (3, MINUTE, 20 * MINUTE),
          VISIT_WEBPAGE: (8, HOUR, 6 * HOUR),
          TRADE_SHOW: (4, HOUR, 12 * HOUR)}
MAX_DELAY = max(most for _, _, most in DELAYS.values())
ORDERS = ("date", "commit")
SALT = 0x1A7E


@dataclass
class Late:
    """The switches, and what they make the endpoints show."""

    dataset: Dataset
    on: bool = False
    bulk_by: str = "date"  # what createdAt selects by: "date" (activityDate) or "commit"
    rest_order: str = "date"  # how Get Lead Activities pages: "date" or "commit" order
    _delays: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("bulk_by", "rest_order"):
            if getattr(self, name) not in ORDERS:
                raise ValueError(f"{name} must be one of {', '.join(ORDERS)}")

    # -- one activity ---------------------------------------------------------------------

    def delay(self, key: int) -> int:
        """Seconds from the activity's date to its commit."""
        if not self.on or key >= MERGE_KEY:
            return 0
        found = self._delays.get(key)
        if found is None:
            rule = DELAYS.get(self.dataset.type_id(key))
            bits = mix(key ^ (SALT << 40) ^ self.dataset.salt)
            found = 0
            if rule is not None and bits % rule[0] == 0:
                found = rule[1] + (bits >> 16) % (rule[2] - rule[1] + 1)
            self._delays[key] = found
        return found

    def committed(self, key: int) -> int:
        """The commit time, in seconds from data_start."""
        return self.dataset.key_offset(key) + self.delay(key)

    def visible(self, key: int, span: int) -> bool:
        return self.committed(key) < span

    # -- bulk -----------------------------------------------------------------------------

    def export_keys(self, start: datetime, end: datetime, end_inclusive: bool) -> list[int]:
        """The keys an export job of this createdAt window holds, as seen now."""
        span = self.dataset.visible_span()
        if self.bulk_by == "date":
            keys = self.dataset.keys_between(start, end, end_inclusive)
            return [key for key in keys if self.visible(key, span)]
        low, high = self._offsets(start, end)
        return [key for key in self._near(low, high + 1)
                if self.visible(key, span) and low <= self.committed(key) and
                (self.committed(key) <= high if end_inclusive else
                 self.committed(key) < high)]

    # -- Get Lead Activities --------------------------------------------------------------

    def shown(self, keys: list[int]) -> list[int]:
        """Of a walk in activityDate order, the keys committed by now."""
        span = self.dataset.visible_span()
        return [key for key in keys if self.visible(key, span)]

    def page(self, text: str, type_ids: frozenset[int], size: int
             ) -> tuple[list[dict[str, Any]], str, bool]:
        """A page in commit order from the token's position: (commit, key) of the next
        activity, or the token's instant as a commit time."""
        token = decode(text)
        found = numbers(token.position, "c")
        if found is None:
            position = (self._offsets(token.instant, token.instant)[0], -1)
        elif len(found) != 2:
            raise ApiError("1003", "Invalid nextPageToken")
        else:
            position = (found[0], found[1])
        entries, more = self._after(position, size)
        taken = entries[:size]
        if taken:
            position = (taken[-1][0], taken[-1][1] + 1)
        dataset = self.dataset
        rows = [rest_form(dataset.activity(key)) for _, key in taken
                if dataset.type_id(key) in type_ids and dataset.kept(key)]
        instant = dataset.start + timedelta(seconds=position[0])
        return rows, encode(Token(instant, f"c{position[0]}.{position[1]}")), more

    def _after(self, position: tuple[int, int], size: int
               ) -> tuple[list[tuple[int, int]], bool]:
        """(commit, key) of the visible activities from `position` on, in commit order: at
        least size + 1 of them, or all there are; and whether there are more than size."""
        span = self.dataset.visible_span()
        reach = HOUR
        while True:
            high = min(span, position[0] + reach)
            entries = sorted(entry for entry in ((self.committed(k), k) for k in
                                                 self._near(position[0], high))
                             if entry >= position and entry[0] < high)
            if len(entries) > size or high >= span:
                return entries, len(entries) > size
            reach *= 2

    # -- for tests ------------------------------------------------------------------------

    def visible_at(self, clock: datetime) -> list[int]:
        """Every key committed before `clock`, in commit order."""
        span = min(self.dataset.visible_span(), self._offsets(clock, clock)[0])
        return [key for _, key in sorted((self.committed(k), k)
                                         for k in self._near(0, span)
                                         if self.committed(k) < span)]

    def committed_text(self, key: int) -> str:
        return format_time(self.dataset.start + timedelta(seconds=self.committed(key)))

    def _offsets(self, start: datetime, end: datetime) -> tuple[int, int]:
        base = self.dataset.start
        return (int((to_time(start) - base).total_seconds()),
                int((to_time(end) - base).total_seconds()))

    def _near(self, low: int, high: int) -> list[int]:
        """Keys dated in [low - MAX_DELAY, high): every one committed in [low, high)."""
        base = self.dataset.start
        first = base + timedelta(seconds=max(0, low - MAX_DELAY))
        last = base + timedelta(seconds=max(0, high))
        return self.dataset.keys_between(first, last, end_inclusive=False) if high > 0 else []


def key_of(dataset: Dataset, guid: str) -> int | None:
    """The key of a marketoGUID (Dataset.own_fields, Merges.activity), or None."""
    if not guid.isdigit():
        return None
    number = int(guid) - MAIN_FIRST_GUID - dataset.seed % 7
    if number >= 0:
        return None if number % 7 else number // 7
    merge = int(guid) - FIRST_GUID
    return MERGE_KEY + merge if 0 <= merge < MAIN_FIRST_GUID - FIRST_GUID else None

