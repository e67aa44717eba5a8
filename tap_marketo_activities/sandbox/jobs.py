"""Export jobs: validation of the create body, the queue and file generation."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .catalog import DELETE_LEAD, activity_types, filter_group
from .data import Dataset, format_time, parse_time
from .export import ALL_FIELDS, DEFAULT_FIELDS, ExportResult, ExportSpec, write_export
from .limits import CENTRAL, day_key

MAX_RANGE = timedelta(days=31)
MAX_PRIMARY_FILTERS = 50
FILTER_KEYS = {"createdAt", "activityTypeIds", "primaryAttributeValueIds",
               "primaryAttributeValues"}
OURS = "sandbox-api-user"
FOREIGN = "another-api-user"


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Job:
    export_id: str
    owner: str
    format: str
    spec: ExportSpec | None
    start_at: str = ""
    end_at: str = ""
    type_ids: list[int] | None = None
    status: str = "Created"
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    started_clock: float = 0.0
    error_msg: str | None = None
    doomed: bool = False
    miscounted: bool = False  # its status says one record more than its file holds
    stuck: bool = False
    path: str | None = None
    result: ExportResult | None = None
    downloads: int = 0
    file_attempts: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)

    def public(self, hidden: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
        out: dict[str, Any] = {"exportId": self.export_id, "status": self.status,
                               "format": self.format, "createdAt": format_time(self.created_at)}
        for key, moment in (("queuedAt", self.queued_at), ("startedAt", self.started_at),
                            ("finishedAt", self.finished_at)):
            if moment is not None:
                out[key] = format_time(moment)
        if self.status == "Completed" and self.result is not None:
            out["numberOfRecords"] = self.result.records + (1 if self.miscounted else 0)
            out["fileSize"] = self.result.size
            out["fileChecksum"] = "sha256:" + self.result.sha256
        if self.status == "Failed" and self.error_msg:
            out["errorMsg"] = self.error_msg
        for key in hidden:
            out.pop(key, None)
        return out

    def summary(self) -> dict[str, Any]:
        done = self.status == "Completed" and self.result is not None
        return {
            "exportId": self.export_id, "status": self.status,
            "activityTypeIds": self.type_ids, "startAt": self.start_at, "endAt": self.end_at,
            "fields": self.spec.fields if self.spec else None, "format": self.format,
            "fileSize": self.result.size if done and self.result else None,
            "numberOfRecords": self.result.records if done and self.result else None,
            "downloads": self.downloads,
        }


def _int_list(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ApiError("1003", f"{name} must be a non-empty array of integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ApiError("1003", f"{name} must be a non-empty array of integers")
    return value


def parse_fields(body: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    fields = body.get("fields") or DEFAULT_FIELDS
    if not isinstance(fields, list):
        raise ApiError("1003", "fields must be an array")
    for name in fields:
        if name not in ALL_FIELDS:
            raise ApiError("1003", f"Invalid field '{name}'")
    names = body.get("columnHeaderNames") or {}
    if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
        raise ApiError("1003", "columnHeaderNames must map field names to strings")
    return list(fields), names


def parse_window(filt: dict[str, Any]) -> tuple[str, str, datetime, datetime]:
    created = filt.get("createdAt")
    if not isinstance(created, dict) or "startAt" not in created or "endAt" not in created:
        raise ApiError("1003", "createdAt filter with startAt and endAt is required")
    start_at, end_at = created["startAt"], created["endAt"]
    try:
        start, end = parse_time(start_at), parse_time(end_at)
    except ValueError as exc:
        raise ApiError("1003", str(exc)) from None
    if end < start:
        raise ApiError("1003", "endAt must not be before startAt")
    if end - start > MAX_RANGE:
        raise ApiError("1003", "createdAt date range exceeds 31 days")
    return start_at, end_at, start, end


def parse_type_ids(filt: dict[str, Any]) -> list[int] | None:
    if "activityTypeIds" not in filt:
        return None
    type_ids = _int_list(filt["activityTypeIds"], "activityTypeIds")
    known = {t["id"] for t in activity_types()}
    for type_id in type_ids:
        if type_id == DELETE_LEAD:
            raise ApiError("1003", "Activity type 37 (Delete Lead) cannot be exported")
        if type_id not in known:
            raise ApiError("1003", f"Invalid activity type id {type_id}")
    return type_ids


def parse_primary(filt: dict[str, Any], type_ids: list[int] | None
                  ) -> tuple[frozenset[Any] | None, frozenset[str] | None]:
    ids, values = filt.get("primaryAttributeValueIds"), filt.get("primaryAttributeValues")
    if ids is None and values is None:
        return None, None
    if ids is not None and values is not None:
        raise ApiError("1003", "primaryAttributeValueIds and primaryAttributeValues "
                               "cannot be combined")
    given = ids if ids is not None else values
    if not isinstance(given, list) or not given or len(given) > MAX_PRIMARY_FILTERS:
        raise ApiError("1003", "primary attribute filters take 1 to 50 values")
    groups = {filter_group(t) for t in type_ids or []}
    if not type_ids or None in groups or len(groups) != 1:
        raise ApiError("1003", "primary attribute filters need activityTypeIds of one "
                               "asset group (13/22, 104, 24/25 or 2)")
    if ids is not None:
        return frozenset(_int_list(ids, "primaryAttributeValueIds")), None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ApiError("1003", "primaryAttributeValues must be strings")
    return None, frozenset(values)


def parse_create(body: Any, dataset: Dataset, end_inclusive: bool,
                 delimiters: dict[str, str]) -> tuple[ExportSpec, str, str, list[int] | None]:
    """Validate a create body like Marketo does (errors 609/1003)."""
    if not isinstance(body, dict):
        raise ApiError("609", "Invalid JSON")
    fmt = body.get("format", "CSV")
    if not isinstance(fmt, str) or fmt.upper() not in delimiters:
        raise ApiError("1003", f"Invalid format '{fmt}'")
    fields, names = parse_fields(body)
    filt = body.get("filter")
    if not isinstance(filt, dict):
        raise ApiError("1003", "filter is required")
    for key in filt:
        if key not in FILTER_KEYS:
            raise ApiError("1003", f"Invalid filter type '{key}'")
    start_at, end_at, start, end = parse_window(filt)
    type_ids = parse_type_ids(filt)
    primary_ids, primary_values = parse_primary(filt, type_ids)
    spec = ExportSpec(
        indices=dataset.index_range(start, end, end_inclusive), fields=fields,
        header_names=names, delimiter=delimiters[fmt.upper()],
        type_ids=frozenset(type_ids) if type_ids else None,
        primary_ids=primary_ids, primary_values=primary_values,
        merges=dataset.merge_range(start, end, end_inclusive))
    return spec, start_at, end_at, type_ids


class JobBoard:
    """The instance's export queue; call every method with `lock` held."""

    def __init__(self, dataset: Dataset, workdir: str, latency: float, slots: int,
                 queue_limit: int, lock: threading.RLock) -> None:
        self.dataset = dataset
        self.workdir = workdir
        self.latency = latency
        self.slots = slots
        self.queue_limit = queue_limit
        self.lock = lock
        self.jobs: dict[str, Job] = {}
        self.queue: list[Job] = []
        self.running: list[Job] = []
        self.max_processing = 0
        self.max_active = 0
        self.dirty_guids: dict[str, str] = {}
        self.closed = False
        # Exports of other kinds (leads, program members) by this API user: they count
        # against the instance's quota but the activity export list does not show them.
        self.other_exports: list[tuple[datetime, int]] = []

    def active(self) -> int:
        return len(self.queue) + len(self.running)

    def mine(self, export_id: str) -> Job | None:
        job = self.jobs.get(export_id)
        return job if job is not None and job.owner == OURS else None

    def enqueue(self, job: Job) -> None:
        job.status = "Queued"
        job.queued_at = datetime.now(timezone.utc)
        self.queue.append(job)
        # The answer says Queued, as Marketo's does; the ticker promotes it a moment later.
        self.max_active = max(self.max_active, self.active())

    def cancel(self, job: Job) -> None:
        if job in self.queue:
            self.queue.remove(job)
        if job in self.running:
            self.running.remove(job)
        job.cancelled.set()
        job.status = "Cancelled"
        self.advance()

    def advance(self) -> None:
        now = time.monotonic()
        for job in list(self.running):
            if now < job.started_clock + self.latency:
                continue
            if job.owner == OURS:
                self.finish(job)
            else:
                # Another tool's job finishes and that tool queues its next one: it keeps
                # its share of the slots without holding them for ever.
                self.running.remove(job)
                self.queue.append(job)
                job.status = "Queued"
        self.promote(now)
        self.max_processing = max(self.max_processing, len(self.running))
        self.max_active = max(self.max_active, self.active())

    def finish(self, job: Job) -> None:
        if job.doomed:
            job.status, job.error_msg = "Failed", "Export failed due to internal error"
        elif job.result is not None:
            job.status = "Completed"
        else:
            return  # the file is still being written: stay Processing
        job.finished_at = datetime.now(timezone.utc)
        self.running.remove(job)

    def promote(self, now: float) -> None:
        for job in list(self.queue):
            if len(self.running) >= self.slots:
                return
            if job.stuck:
                continue
            self.queue.remove(job)
            self.running.append(job)
            job.status, job.started_clock = "Processing", now
            job.started_at = datetime.now(timezone.utc)
            if job.owner == OURS and not job.doomed:
                self.start_writer(job)

    def start_writer(self, job: Job) -> None:
        job.path = os.path.join(self.workdir, f"{job.export_id}.export")
        threading.Thread(target=self.write, args=(job,), daemon=True,
                         name=f"sandbox-export-{job.export_id[:8]}").start()

    def write(self, job: Job) -> None:
        assert job.spec is not None and job.path is not None
        try:
            result = write_export(self.dataset, job.spec, job.path, job.cancelled)
        except OSError:
            if self.closed:
                return  # the work dir went away during stop()
            raise
        with self.lock:
            if result is not None:
                job.result = result
                self.dirty_guids.update(result.dirty)
            self.advance()

    def set_foreign(self, count: int, new_id: Any) -> None:
        foreign = [j for j in self.queue + self.running if j.owner == FOREIGN]
        for job in foreign[count:]:
            self.cancel(job)
        for _ in range(count - len(foreign)):
            job = Job(export_id=new_id(), owner=FOREIGN, format="CSV", spec=None)
            self.jobs[job.export_id] = job
            self.enqueue(job)

    def bytes_by_day(self) -> dict[str, int]:
        """Bytes of this API user's completed exports per day (US Central), as the quota
        counts them: activity exports and the other exports."""
        days: dict[str, int] = {}
        for job in self.jobs.values():
            if job.owner == OURS and job.status == "Completed" and job.result \
                    and job.finished_at:
                key = day_key(job.finished_at)
                days[key] = days.get(key, 0) + job.result.size
        for finished, size in self.other_exports:
            days[day_key(finished)] = days.get(day_key(finished), 0) + size
        return days

    def bytes_today(self) -> int:
        return self.bytes_by_day().get(day_key(), 0)

    def age(self, days: int = 1) -> None:
        """Everything that happened so far happened `days` days earlier (calendar days in
        US Central): a new day starts, with a fresh quota, and every job is kept."""
        def earlier(moment: datetime) -> datetime:
            local = moment.astimezone(CENTRAL)
            return (local - timedelta(days=days)).astimezone(timezone.utc)

        for job in self.jobs.values():
            job.created_at = earlier(job.created_at)
            for name in ("queued_at", "started_at", "finished_at"):
                moment = getattr(job, name)
                if moment is not None:
                    setattr(job, name, earlier(moment))
        self.other_exports = [(earlier(f), size) for f, size in self.other_exports]

    def listed(self, statuses: set[str] | None) -> list[Job]:
        mine = [j for j in self.jobs.values() if j.owner == OURS]
        mine = [j for j in mine if statuses is None or j.status in statuses]
        return sorted(mine, key=lambda j: j.created_at, reverse=True)
