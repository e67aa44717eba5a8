"""Marketo's purge (its Activities Data Retention Policy): with `on`, an activity older than
its type's retention at the sandbox's clock is gone from every endpoint, for good.

Delete Lead after 14 days; Visit Webpage, Click Link, Send Email, Email Delivered, Change
Data Value, Change Score, Add to List and Request Campaign after 90 days; New Lead never;
every other type after `months` (25, or 37 with Marketo's paid option). The sandbox keeps
its own table: it plays Marketo and imports nothing from the tap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .data import Dataset

KEPT_DAYS = {37: 14, 1: 90, 3: 90, 6: 90, 7: 90, 13: 90, 22: 90, 24: 90, 47: 90}
FOREVER = frozenset({12})


@dataclass
class Purge:
    dataset: Dataset
    on: bool = False
    months: int = 25

    def now(self) -> datetime:
        """Marketo's time: the clock a test set, else the data's end (the real clock for
        live data)."""
        dataset = self.dataset
        if dataset.clock is not None:
            return dataset.clock
        return datetime.now(timezone.utc) if dataset.live else dataset.end

    def edge(self, type_id: int) -> datetime | None:
        """The oldest activityDate of this type still kept, or None: all are."""
        if not self.on or type_id in FOREVER:
            return None
        now = self.now()
        days = KEPT_DAYS.get(type_id)
        if days is not None:
            return now - timedelta(days=days)
        year, month = divmod(now.year * 12 + now.month - 1 - self.months, 12)
        day = now.day
        while True:
            try:
                return now.replace(year=year, month=month + 1, day=day)
            except ValueError:
                day -= 1

    def kept(self, key: int) -> bool:
        """Whether the activity of this key is still there."""
        edge = self.edge(self.dataset.type_id(key)) if self.on else None
        if edge is None:
            return True
        offset = int((edge - self.dataset.start).total_seconds())
        return self.dataset.key_offset(key) >= offset
