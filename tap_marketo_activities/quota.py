"""The daily bulk export quota: what this tap has used today, and the room left under its cap.

Marketo counts the `fileSize` of completed exports against 500 MB a day, reset at midnight
US Central time, and shares it with every bulk export of the instance.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from tap_marketo_activities.client import MarketoClient, QuotaExhausted

logger = logging.getLogger(__name__)

try:
    from zoneinfo import ZoneInfo

    CENTRAL: dt.tzinfo = ZoneInfo("America/Chicago")
except Exception:  # no tz database on this machine: standard time is close enough
    CENTRAL = dt.timezone(dt.timedelta(hours=-6))

LIST_PATH = "/bulk/v1/activities/export.json"
MB = 1024 * 1024


def central_midnight(now: dt.datetime) -> dt.datetime:
    local = now.astimezone(CENTRAL)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def next_reset(now: dt.datetime) -> dt.datetime:
    return central_midnight(now) + dt.timedelta(days=1)


def _parse(value: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


class ExportQuota:
    """Bytes exported today by this API user, against the tap's own daily cap."""

    def __init__(self, cap_bytes: float, used_bytes: int = 0) -> None:
        self.cap_bytes = cap_bytes
        self.used_bytes = used_bytes
        self.largest_per_day = 0.0  # bytes per window-day of the largest file so far
        self._lock = threading.Lock()

    @classmethod
    def from_marketo(cls, client: MarketoClient, cap_bytes: float) -> ExportQuota:
        """Today's usage: fileSize of this user's activity exports Completed since midnight."""
        since = central_midnight(dt.datetime.now(dt.timezone.utc))
        used = 0
        token: str | None = None
        while True:
            params: dict[str, Any] = {"status": "Completed", "batchSize": 300}
            if token:
                params["nextPageToken"] = token
            envelope = client.get(LIST_PATH, params)
            for job in envelope.get("result") or []:
                finished = _parse(job.get("finishedAt"))
                if finished and finished >= since:
                    used += int(job.get("fileSize") or 0)
            token = envelope.get("nextPageToken")
            if not token or not envelope.get("result"):
                break
        logger.info("Bulk export quota: %.1f MB used today by this API user; this tap stops "
                    "before %.1f MB (max_export_mb_per_day).", used / MB, cap_bytes / MB)
        return cls(cap_bytes, used)

    def check_room(self, spec: Any) -> None:
        """Refuse to start a job that would likely take the day's total over the cap."""
        days = max((spec.end - spec.start).total_seconds() / 86400, 1 / 24)
        with self._lock:
            estimate = self.largest_per_day * days
            if self.used_bytes + estimate <= self.cap_bytes:
                return
        now = dt.datetime.now(dt.timezone.utc)
        raise QuotaExhausted(
            f"This tap's daily export cap is reached: {self.used_bytes / MB:.1f} MB used "
            f"today, the next window would need about {estimate / MB:.1f} MB more, and "
            f"max_export_mb_per_day is {self.cap_bytes / MB:.1f}. The quota resets at "
            f"midnight US Central ({next_reset(now):%Y-%m-%d %H:%M %Z}); run again after "
            "that and the sync resumes from its state."
        )

    def add(self, spec: Any, file_size: int) -> None:
        days = max((spec.end - spec.start).total_seconds() / 86400, 1 / 24)
        with self._lock:
            self.used_bytes += file_size
            self.largest_per_day = max(self.largest_per_day, file_size / days)
