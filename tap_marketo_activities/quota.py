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
        self.reserved_bytes = 0.0
        self.running = 0
        self.bytes_per_day = 0.0  # the largest seen so far: the estimate for the next job
        self._cond = threading.Condition()

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

    def reserve(self, spec: Any) -> float:
        """Book room for a job before it starts, or stop cleanly. Until one job of this run
        has finished there is nothing to estimate from: then, once over half the cap is
        used, the first job runs alone so that its size can be learnt."""
        days = _days(spec)
        with self._cond:
            while self.bytes_per_day == 0 and self.running > 0 and \
                    self.used_bytes > self.cap_bytes / 2:
                self._cond.wait(timeout=1.0)
            estimate = self.bytes_per_day * days * 1.2
            if self.used_bytes + self.reserved_bytes + estimate > self.cap_bytes:
                raise QuotaExhausted(self._refusal(estimate))
            self.reserved_bytes += estimate
            self.running += 1
            return estimate

    def settle(self, spec: Any, reserved: float, file_size: int | None) -> None:
        """A job ended: its real size replaces its reservation (None: it exported nothing)."""
        with self._cond:
            self.reserved_bytes -= reserved
            self.running -= 1
            if file_size is not None:
                self.used_bytes += file_size
                self.bytes_per_day = max(self.bytes_per_day, file_size / _days(spec), 1.0)
            self._cond.notify_all()

    def _refusal(self, estimate: float) -> str:
        now = dt.datetime.now(dt.timezone.utc)
        return (
            f"This tap's daily export cap is reached: {self.used_bytes / MB:.1f} MB used "
            f"today, the next window needs about {estimate / MB:.1f} MB more, and "
            f"max_export_mb_per_day is {self.cap_bytes / MB:.1f}. The quota resets at "
            f"midnight US Central ({next_reset(now):%Y-%m-%d %H:%M %Z}); run again after "
            "that and the sync resumes from its state."
        )


def _days(spec: Any) -> float:
    return max((spec.end - spec.start).total_seconds() / 86400, 1 / 24)
