"""API call limits and the switchable fault plan."""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo

# Marketo resets daily counters at midnight US Central (CST or CDT, as the tap reckons it).
try:
    from zoneinfo import ZoneInfo

    CENTRAL: tzinfo = ZoneInfo("America/Chicago")
except Exception:  # no tz database on this machine: standard time
    CENTRAL = timezone(timedelta(hours=-6))

ERROR_MESSAGES = {
    "601": "Access token invalid",
    "602": "Access token expired",
    "604": "Request timed out",
    "606": "Max rate limit '{calls}' exceeded with in '{window}' secs",
    "607": "Daily quota reached",
    "608": "API Temporarily Unavailable",
    "609": "Invalid JSON",
    "610": "Requested resource not found",
    "611": "System error",
    "615": "Concurrent access limit '{concurrency}' reached",
    "713": "Transient Error",
}


def day_key(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(timezone.utc)
    return moment.astimezone(CENTRAL).strftime("%Y-%m-%d")


@dataclass
class FileShape:
    """Export files in the other shapes Marketo documents (its API reference's example), each
    switched on alone or together; the default is Adobe's current shape."""

    # activityDate written with this UTC offset, e.g. "+0000", "+00:00", "-0500" ("": Z).
    date_offset: str = ""
    # attributes as [{"name": ..., "value": ...}] instead of an object.
    attributes_as_list: bool = False
    # a space before every header name after the first (`..., attributes`).
    spaced_header: bool = False


@dataclass
class Faults:
    error_rate: dict[str, float] = field(default_factory=dict)
    http_5xx_rate: float = 0.0
    reset_rate: float = 0.0
    stall_seconds: float = 0.0
    stall_rate: float = 0.0
    fail_jobs: int = 0
    stuck_jobs: int = 0
    queue_full_times: int = 0
    already_queued_times: int = 0
    foreign_jobs: int = 0
    quota_607_after: int | None = None
    file_404_times: int = 0
    break_download_rate: float = 0.0
    stall_download_rate: float = 0.0
    corrupt_download_times: int = 0
    expire_files: bool = False
    dirty_rows: bool = False
    # Answers that are not what the call returns: {route name: kind} (ODD_KINDS), for the
    # first `odd_answer_times` calls of each route (-1: every call).
    odd_answers: dict[str, str] = field(default_factory=dict)
    odd_answer_times: int = -1
    # Keys left out of a Completed job's status (fileSize, fileChecksum, numberOfRecords).
    hide_status_fields: list[str] = field(default_factory=list)
    miscount_jobs: int = 0  # jobs whose status counts one record more than the file holds
    # Files served without Content-Length (the body ends when the connection closes).
    close_delimited_files: bool = False
    # The first N downloads of each file end early, the connection closed.
    cut_file_times: int = 0
    # Range headers on file downloads are ignored: every answer is the whole file, HTTP 200.
    ignore_ranges: bool = False
    # A file unlike what was asked (FILE_DEFECTS): its checksum and size still match it.
    file_defect: str = ""
    # Rows of an activity type the job did not ask for, added to each file.
    foreign_type_rows: int = 0
    file_shape: FileShape = field(default_factory=FileShape)
    # Answer the identity call, or every other call, with a redirect to this origin.
    redirect_identity_to: str = ""
    redirect_calls_to: str = ""
    # Route names (service.ROUTES: "activities", "deleted_leads", "status", ...) that the
    # transport and error faults above (reset, stall, error_rate, http_5xx) hit; empty: all.
    routes: list[str] = field(default_factory=list)

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}


ODD_KINDS = ("not_envelope", "empty_result", "null_result", "list_result", "no_export_id",
             "unknown_status", "stays_created", "html", "json_file", "no_success")
FILE_DEFECTS = ("missing_column", "unknown_column", "short_rows", "long_rows")


class CallLimits:
    """Rolling-window, concurrency and daily limits; refused calls do not count."""

    def __init__(self, calls: int, window: float, concurrency: int, daily: int) -> None:
        self.calls = calls
        self.window = window
        self.concurrency = concurrency
        self.daily = daily
        self.recent: collections.deque[float] = collections.deque()
        self.in_flight = 0
        self.max_in_flight = 0
        self.day = day_key()
        self.day_calls = 0
        self.other_calls: collections.Counter[str] = collections.Counter()  # other API users'
        self.refused: collections.Counter[str] = collections.Counter()

    def admit(self) -> str | None:
        """Count the call in, or return the error code that refuses it."""
        now = time.monotonic()
        while self.recent and self.recent[0] <= now - self.window:
            self.recent.popleft()
        today = day_key()
        if today != self.day:
            self.day, self.day_calls = today, 0
            self.other_calls.clear()
        code = self.refusal()
        if code:
            self.refused[code] += 1
            return code
        self.recent.append(now)
        self.day_calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return None

    def refusal(self) -> str | None:
        if self.in_flight >= self.concurrency:
            return "615"
        if len(self.recent) >= self.calls:
            return "606"
        if self.day_calls >= self.daily:
            return "607"
        return None

    def spend(self, calls: int, user: str | None) -> None:
        """Calls made today elsewhere: by this API user (None), or another."""
        self.day_calls += calls
        if user is not None:
            self.other_calls[user] += calls

    def release(self) -> None:
        self.in_flight -= 1

    def message(self, code: str) -> str:
        return ERROR_MESSAGES.get(code, "Error").format(
            calls=self.calls, window=f"{self.window:g}", concurrency=self.concurrency)
