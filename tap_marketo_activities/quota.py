"""The daily bulk export quota: what has been used today, what a window will cost, and the plan.

Marketo counts the `fileSize` of completed exports against 500 MB a day, reset at midnight
US Central time, and shares it with every bulk export of the instance. This module is
arithmetic only: the scheduler asks it what a window will cost and whether it fits.

Sizes are learnt as bytes per day per activity type (and whether the job exported the
`attributes` column, which is most of a file's bytes), so that runs whose types and fields
differ still estimate well. They are kept in the state between runs.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

from tap_marketo_activities.text import plural

try:
    from zoneinfo import ZoneInfo

    CENTRAL: dt.tzinfo = ZoneInfo("America/Chicago")
except Exception:  # no tz database on this machine: standard time is close enough
    CENTRAL = dt.timezone(dt.timedelta(hours=-6))

MB = 1024 * 1024  # the one meaning of MB: settings, logs, summary and README
MARGIN = 1.2  # a window is reserved at its estimate plus this much (days differ)...
SPREAD = 3.0  # ...plus this many standard deviations of its row count (a short window's
ROW_BYTES = 400  # rows are few, so chance weighs more), at about the most a row takes
RATE_MEMORY_DAYS = 31.0  # how many days of earlier exports an estimate keeps weighing
DAY = 86400.0
WORTH_A_JOB = 0.02  # a window cut to fit must be worth this share of the cap: a job takes
# Marketo 20-70 minutes, the day's last crumbs of quota are not worth one
FILE_OVERHEAD_BYTES = 1024  # a file's header, which a short window's rows do not pay for


def central_midnight(now: dt.datetime) -> dt.datetime:
    local = now.astimezone(CENTRAL)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def next_reset(now: dt.datetime) -> dt.datetime:
    return central_midnight(now) + dt.timedelta(days=1)


def reset_text(now: dt.datetime) -> str:
    """When the quota resets, in UTC and US Central."""
    reset = next_reset(now)
    return (f"{reset.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC "
            f"({reset:%Y-%m-%d %H:%M} US Central)")


def size_key(type_id: int, fields: Iterable[str]) -> str:
    return str(type_id) if "attributes" in fields else f"{type_id}:narrow"


def mb(size: float) -> str:
    return f"{size / MB:.2f} MB"


class ExportQuota:
    """Bytes exported today by this API user against the tap's own cap, and the learnt sizes.

    Not thread-safe: the scheduler calls it under its own lock."""

    def __init__(self, cap_bytes: float, used_bytes: int = 0,
                 rates: Mapping[str, Any] | None = None) -> None:
        self.cap_bytes = cap_bytes
        self.used_bytes = used_bytes  # today, before and during this run
        self.used_by_run = 0
        self.reserved_bytes = 0.0
        self.running = 0
        self.rates: dict[str, tuple[float, float]] = {}  # key -> (bytes per day, days seen)
        for key, value in (rates or {}).items():
            if isinstance(value, list | tuple) and len(value) == 2:
                self.rates[str(key)] = (float(value[0]), float(value[1]) / DAY)

    # -- estimates ------------------------------------------------------------------------

    def bytes_per_day(self, keys: Iterable[str]) -> float | None:
        """What a day of these keys exports; None while nothing at all has been learnt.
        A key not seen yet counts as the average of those seen."""
        if not self.rates:
            return None
        average = sum(rate for rate, _ in self.rates.values()) / len(self.rates)
        return sum(self.rates.get(key, (average, 0.0))[0] for key in keys)

    def estimate(self, keys: Iterable[str], seconds: float) -> float | None:
        rate = self.bytes_per_day(keys)
        return None if rate is None else rate * seconds / DAY + FILE_OVERHEAD_BYTES

    def learn(self, sizes: Mapping[str, float], seconds: float) -> None:
        """A file read: `sizes` are its bytes per key over a window of `seconds`."""
        days = max(seconds / DAY, 1 / 24)
        for key, size in sizes.items():
            old_rate, old_days = self.rates.get(key, (0.0, 0.0))
            seen = min(old_days, RATE_MEMORY_DAYS)
            self.rates[key] = ((old_rate * seen + size) / (seen + days), seen + days)

    def saved_rates(self) -> dict[str, list[int]]:
        """For the state: [bytes per day, seconds of exports seen], as integers (SDK targets
        read JSON numbers as Decimal, and some cannot write a Decimal back out)."""
        return {key: [round(rate), round(days * DAY)] for key, (rate, days) in
                sorted(self.rates.items())}

    # -- room ---------------------------------------------------------------------------

    def room(self) -> float:
        return self.cap_bytes - self.used_bytes - self.reserved_bytes

    @staticmethod
    def reservation(estimate: float) -> float:
        """What a window estimated at `estimate` bytes holds of the day's room."""
        return estimate * MARGIN + SPREAD * math.sqrt(max(estimate, 0.0) * ROW_BYTES)

    def fits(self, estimate: float) -> bool:
        return self.reservation(estimate) <= self.room()

    def seconds_that_fit(self, keys: Iterable[str]) -> float:
        """The longest window of these keys whose reservation fits the room left."""
        rate = self.bytes_per_day(keys) or 0.0
        if rate <= 0:  # types that exported nothing yet: any window, if a file's header fits
            return math.inf if self.fits(FILE_OVERHEAD_BYTES) else 0.0
        room = max(0.0, self.room())
        # reservation(e) = room, with e = y * y: MARGIN y² + SPREAD √ROW_BYTES y - room = 0
        b = SPREAD * math.sqrt(ROW_BYTES)
        y = (math.sqrt(b * b + 4 * MARGIN * room) - b) / (2 * MARGIN)
        return max(0.0, (y * y - FILE_OVERHEAD_BYTES) / rate * DAY)

    def reserve(self, estimate: float | None) -> float:
        amount = self.reservation(estimate or 0.0)
        self.reserved_bytes += amount
        self.running += 1
        return amount

    def settle(self, reserved: float, file_size: int | None) -> None:
        """A job ended: its real size replaces its reservation (None: it exported nothing
        that counts today)."""
        self.reserved_bytes -= reserved
        self.running -= 1
        if file_size:
            self.used_bytes += file_size
            self.used_by_run += file_size

    # -- words --------------------------------------------------------------------------

    def plan_line(self, left_bytes: float, streams: int, now: dt.datetime) -> str:
        """`Backfill plan: …`: what is left, and how many daily runs it takes at the cap."""
        if left_bytes <= 0:
            return (f"Backfill plan: nothing left to export for {plural(streams, 'stream')}: "
                    "the backfill is done.")
        today = self.room_today()
        more = self.runs_after_today(left_bytes)
        finish = central_midnight(now) + dt.timedelta(days=more)
        if today:
            runs = more + 1
            when = f"{plural(runs, 'daily run')} (today's included)"
        else:
            when = f"{plural(more, 'more daily run')}, from tomorrow"
        return (f"Backfill plan: about {mb(left_bytes)} left to export for "
                f"{plural(streams, 'stream')}; at max_export_mb_per_day="
                f"{self.cap_bytes / MB:g} that is {when}, finishing around "
                f"{finish:%Y-%m-%d} (US Central), if other tools leave the quota alone.")

    def room_today(self) -> float:
        """What is left of today's cap, or 0 when that is too little for a job."""
        today = max(0.0, self.cap_bytes - self.used_bytes)
        return 0.0 if today < WORTH_A_JOB * self.cap_bytes else today

    def runs_after_today(self, left_bytes: float) -> int:
        """The daily runs after today that exporting `left_bytes` takes."""
        return math.ceil(max(0.0, left_bytes - self.room_today()) / self.cap_bytes)

    def cap_reached(self, now: dt.datetime) -> str:
        return (f"This tap's daily export cap is reached: {mb(self.used_bytes)} of "
                f"max_export_mb_per_day={self.cap_bytes / MB:g} MB used today by this API "
                f"user. The quota resets at {reset_text(now)}; the next run resumes there.")
