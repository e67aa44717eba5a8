"""What Marketo deletes: its Activities Data Retention Policy, in one table.

Marketo deletes activities for good once they are older than their type keeps them: Delete
Lead after 14 days; Visit Webpage, Click Link, Send Email, Email Delivered, Change Data
Value, Change Score, Add to List and five more after 90 days; every other type, custom ones
included, after 25 months (37 with a paid option: `retention_months`); New Lead never. The
edge moves every day. The plan (plan.py) asks for no type before its edge.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tap_marketo_activities.schema import DELETE_LEAD_TYPE_ID, STREAM_PREFIX, snake_case

NEW_LEAD = 12
# Type id -> days Marketo keeps it.
KEPT_DAYS: dict[int, int] = {
    DELETE_LEAD_TYPE_ID: 14,
    1: 90,  # Visit Webpage
    3: 90,  # Click Link
    6: 90,  # Send Email
    7: 90,  # Email Delivered
    13: 90,  # Change Data Value
    22: 90,  # Change Score
    24: 90,  # Add to List
    47: 90,  # Request Campaign
}
# Marketo's policy names these 90-day types without ids: they are known by name.
KEPT_DAYS_BY_NAME: dict[str, int] = {
    "Sync Lead to SFDC": 90,
    "Sync Lead to Microsoft": 90,
    "Sync Lead Updates to SFDC": 90,
    "Update Opportunity": 90,
}
KEPT_FOREVER = frozenset({NEW_LEAD})
RETENTION_MONTHS = (25, 37)  # every other type; 37 with Marketo's paid option
# The edge is taken this much before the tap's clock puts it: Marketo's clock may run
# behind ours, and its purge runs once a day. Reading a day more costs almost nothing
# (purged rows weigh nothing in an export); a day less would skip rows still there.
MARGIN = dt.timedelta(days=1)


@dataclass(frozen=True)
class Retention:
    """How long Marketo keeps a type: days or months; neither: forever."""

    days: int | None = None
    months: int | None = None

    @property
    def forever(self) -> bool:
        return self.days is None and self.months is None

    def edge(self, now: dt.datetime) -> dt.datetime | None:
        """The oldest instant whose rows may still be there at `now` (a MARGIN early), or
        None: nothing is deleted."""
        deleted = self.deleted_before(now)
        return None if deleted is None else deleted - MARGIN

    def deleted_before(self, now: dt.datetime) -> dt.datetime | None:
        """Where Marketo's purge leaves rows at `now` by its policy, or None: nowhere."""
        if self.days is not None:
            return now - dt.timedelta(days=self.days)
        if self.months is not None:
            return months_before(now, self.months)
        return None

    def words(self) -> str:
        if self.days is not None:
            return f"Marketo keeps {self.days} days"
        if self.months is not None:
            return f"Marketo keeps {self.months} months"
        return "Marketo keeps them forever"


FOREVER = Retention()


# The stream names of the types known by name (a catalog carries the name, not the type's).
_KEPT_DAYS_BY_STREAM = {STREAM_PREFIX + snake_case(name): days
                        for name, days in KEPT_DAYS_BY_NAME.items()}


def retention_of(type_id: int, stream_name: str, months: int) -> Retention:
    """How long Marketo keeps activities of this type (`months`: retention_months)."""
    if type_id in KEPT_FOREVER:
        return FOREVER
    days = KEPT_DAYS.get(type_id, _KEPT_DAYS_BY_STREAM.get(stream_name))
    return Retention(days=days) if days is not None else Retention(months=months)


def months_before(moment: dt.datetime, months: int) -> dt.datetime:
    """The same day and time `months` calendar months earlier (the month's last day when
    that month is shorter)."""
    year, month = divmod(moment.year * 12 + moment.month - 1 - months, 12)
    day = moment.day
    while True:
        try:
            return moment.replace(year=year, month=month + 1, day=day)
        except ValueError:
            day -= 1
