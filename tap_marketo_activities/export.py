"""One bulk export job's life, "the paginator": create, enqueue, poll, download the file.

A job is created here (`ExportJob._create`), waits for room in the queue, is polled with a
growing interval, and its file is downloaded with Range resume and a sha256 check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import requests
from typing_extensions import override

from tap_marketo_activities.client import (
    FatalError,
    FileNotReady,
    JobAlreadyQueued,
    MarketoClient,
    PastTheEnd,
    QueueFull,
    Stopped,
    excerpt,
)
from tap_marketo_activities.instants import isoformat, parse_datetime
from tap_marketo_activities.quota import central_midnight
from tap_marketo_activities.records import FileRejected, check_file
from tap_marketo_activities.schema import EXPORT_COLUMNS
from tap_marketo_activities.settings import PrimaryFilter, parse_instant
from tap_marketo_activities.text import plural

logger = logging.getLogger(__name__)

EXPORT_PATH = "/bulk/v1/activities/export"
EXPORT_FIELDS = EXPORT_COLUMNS  # what a job asks for when no stream says less
FIRST_POLL_SECONDS = 3.0
POLL_GROWTH = 1.5
QUEUE_FULL_WAIT_SECONDS = 30.0
FILE_NOT_READY_TRIES = 4  # Marketo has said Completed a moment before the file was there
DOWNLOAD_RESUMES = 20
CHECKSUM_ATTEMPTS = 3
CHUNK_BYTES = 1 << 20
PAGE_SIZE = 300  # Marketo's most per page of a listing


class JobStatus(str, Enum):
    """Where a job is: Marketo's six statuses, then this tap's own words for a job."""

    CREATED = "Created"
    QUEUED = "Queued"
    PROCESSING = "Processing"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    NEW = "New"  # not created yet, or an earlier run's job not asked about yet
    TIMEOUT = "Timeout"  # not Completed within job_timeout_seconds
    GONE = "Gone"  # its file never served: not kept in the state, the next run asks anew
    REJECTED = "Rejected"  # its file not what was asked: not kept in the state either

    @override
    def __str__(self) -> str:
        return self.value


RUNNING_STATUSES = (JobStatus.CREATED, JobStatus.QUEUED, JobStatus.PROCESSING)
FINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
MARKETO_STATUSES = frozenset(s.value for s in RUNNING_STATUSES + FINAL_STATUSES)
KEPT_STATUSES = (*RUNNING_STATUSES, JobStatus.COMPLETED, JobStatus.NEW)  # re-used after a crash


def job_problem(job: dict[str, Any]) -> str | None:
    """What makes an answer about a job odd (see MarketoClient.result), if anything."""
    if not job.get("exportId"):
        return "a job without exportId"
    if job.get("status") not in MARKETO_STATUSES:
        return "an unknown job status"
    return None


def listing_problem(result: Any) -> str | None:
    jobs = result or []
    if not all(isinstance(job, dict) and not job_problem(job) for job in jobs):
        return "a job list with an odd job in it"
    return None


class JobFailed(FatalError):
    """A window's job Failed, was Cancelled by someone else, or timed out, too often."""


class FileGone(FatalError):
    """The export's file is no longer served (retention passed): the window needs a new job."""


class FileRefused(FatalError):
    """The job's file is whole but not what was asked (records.FileRejected): the job is
    dropped and created again, up to max_job_attempts."""


# Of JobSpec.key: what an earlier run's export may differ in and still be re-used.
VARYING_KEYS = ("startAt", "endAt", "activityTypeIds", "fields")


@dataclass(frozen=True)
class JobSpec:
    """What one export job asks for."""

    start: dt.datetime
    end: dt.datetime
    type_ids: tuple[int, ...]
    fields: tuple[str, ...] = EXPORT_FIELDS
    export_format: str = "CSV"
    primary_filter: PrimaryFilter | None = None
    header_names: tuple[tuple[str, str], ...] = ()  # Marketo's columnHeaderNames

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "format": self.export_format,
            "fields": list(self.fields),
            "filter": {
                "createdAt": {"startAt": isoformat(self.start), "endAt": isoformat(self.end)},
                "activityTypeIds": list(self.type_ids),
                **(self.primary_filter.body() if self.primary_filter else {}),
            },
        }
        if self.header_names:
            body["columnHeaderNames"] = dict(self.header_names)
        return body

    def key(self) -> dict[str, Any]:
        """What identifies this export for re-attaching to it in a later run (read back by
        `spec_of_export`)."""
        key: dict[str, Any] = {"startAt": isoformat(self.start), "endAt": isoformat(self.end),
               "activityTypeIds": list(self.type_ids), "fields": list(self.fields),
               "format": self.export_format}
        if self.primary_filter or self.header_names:
            key["filter"] = self.body()["filter"]
            key["columnHeaderNames"] = dict(self.header_names)
        return key

    @property
    def label(self) -> str:
        return (f"window {isoformat(self.start)} .. {isoformat(self.end)} "
                f"({plural(len(self.type_ids), 'type')})")


def spec_of_export(export: Mapping[str, Any], like: JobSpec) -> JobSpec | None:
    """The JobSpec an earlier run's export asked for, or None when it differs from `like`
    in anything but its window, types and fields (format, filter, header names)."""
    try:
        spec = replace(like, start=parse_instant("exportId", export["startAt"]),
                       end=parse_instant("exportId", export["endAt"]),
                       type_ids=tuple(int(t) for t in export["activityTypeIds"]),
                       fields=tuple(str(f) for f in export["fields"]))
    except (KeyError, TypeError, ValueError):
        return None
    same = {k: v for k, v in spec.key().items() if k not in VARYING_KEYS}
    asked = {k: v for k, v in export.items() if k not in ("exportId", *VARYING_KEYS)}
    if "filter" in same:  # the filter also holds the window and the types
        same["filter"] = {k: v for k, v in same["filter"].items()
                          if k not in ("createdAt", "activityTypeIds")}
        asked["filter"] = {k: v for k, v in (asked.get("filter") or {}).items()
                           if k not in ("createdAt", "activityTypeIds")}
    return spec if same == asked else None


@dataclass(frozen=True)
class JobTimings:
    """From the settings (poll_interval_seconds, job_timeout_seconds, max_job_attempts)."""

    poll_interval: float
    job_timeout: float
    max_attempts: int


@dataclass
class CompletedExport:
    export_id: str
    path: Path
    records: int | None  # Marketo's numberOfRecords; None when it did not say
    file_size: int
    checksum: str = ""


@dataclass
class RetryPolicy:
    """A job's one retry policy: a job that ends Failed or Cancelled, or whose file is gone
    or refused, is created again up to max_job_attempts in all; a timeout, once."""

    max_attempts: int
    failures: int = 0
    timeouts: int = 0

    def another(self, outcome: JobStatus) -> bool:
        """Counts this outcome; whether another job may be created."""
        if outcome == JobStatus.TIMEOUT:
            self.timeouts += 1
            return self.timeouts <= 1
        self.failures += 1
        return self.failures < self.max_attempts

    def why(self, outcome: JobStatus, timeout: float) -> str:
        if outcome == JobStatus.TIMEOUT:
            return f"not Completed within {timeout:.0f} s, twice"
        return f"{outcome} {self.failures} times"


class StatusBoard:
    """One list call stands for the status calls of all our jobs in flight.

    Jobs polling within `max_age` seconds of each other share one listing of this API
    user's Created, Queued and Processing exports; a job missing from it has finished, and
    only then asks for its own status (which carries fileSize and fileChecksum)."""

    def __init__(self, client: MarketoClient, max_age: float = FIRST_POLL_SECONDS) -> None:
        self.client = client
        self.max_age = max_age
        self._jobs: dict[str, dict[str, Any]] = {}
        self._taken_at = float("-inf")
        self._lock = threading.Lock()
        self.usable = True

    def status(self, export_id: str, known_since: float) -> dict[str, Any] | None:
        """The job as listed, or None: not in flight (ask for its status), or the listing
        is older than the caller's last change to the job (`known_since`, monotonic)."""
        with self._lock:
            if time.monotonic() - self._taken_at > self.max_age:
                self._refresh()
            if not self.usable or self._taken_at < known_since:
                return None
            return self._jobs.get(export_id)

    def _refresh(self) -> None:
        taken_at = time.monotonic()
        try:
            jobs = {str(j.get("exportId")): j for j in list_exports(self.client,
                                                                     RUNNING_STATUSES)}
        except FatalError as exc:
            logger.warning("Listing export jobs failed (%s): polling each job instead.", exc)
            self.usable = False
            return
        self._jobs, self._taken_at = jobs, taken_at


def list_exports(client: MarketoClient, statuses: Iterable[str]) -> Iterator[dict[str, Any]]:
    """This API user's activity exports of the past 7 days in these statuses, every page."""
    params = {"status": ",".join(statuses), "batchSize": PAGE_SIZE}
    return client.pages(f"{EXPORT_PATH}.json", params, listing_problem)


def used_today(client: MarketoClient, now: dt.datetime) -> int:
    """Bytes of this API user's activity exports Completed since midnight US Central: what
    Marketo counts against today's export quota."""
    since = central_midnight(now)
    used = 0
    for job in list_exports(client, (JobStatus.COMPLETED,)):
        try:
            finished = parse_datetime(str(job.get("finishedAt")))
        except ValueError:
            continue
        if finished >= since:
            used += int(job.get("fileSize") or 0)
    return used


class ExportJob:
    """Runs one JobSpec to a verified file on disk, retrying what can be retried."""

    def __init__(self, *, client: MarketoClient, spec: JobSpec, workdir: Path,
                 timings: JobTimings, stop: threading.Event, export_id: str | None = None,
                 board: StatusBoard | None = None,
                 on_created: Callable[[str], None] = lambda export_id: None) -> None:
        self.client = client
        self.on_created = on_created  # before enqueueing: the state must name the job
        self.board = board
        self._status_known_at = float("-inf")
        self.spec = spec
        self.workdir = workdir
        self.timings = timings
        self.stop = stop
        self.export_id = export_id  # set: re-attach to a job of an earlier run
        self.story: list[str] = []
        self._status = JobStatus.NEW
        self.status_since = time.monotonic()
        self.completed_before = False  # re-used and already Completed: its bytes counted
        self.received = 0  # bytes of the file so far, for progress on a terminal

    @property
    def status(self) -> JobStatus:
        return self._status

    @status.setter
    def status(self, value: JobStatus) -> None:
        if value != self._status:
            self._status, self.status_since = value, time.monotonic()

    def run(self) -> CompletedExport:
        policy = RetryPolicy(self.timings.max_attempts)
        if self.export_id is not None:
            self._note(f"re-attaching to {self.export_id} from the last run")
        while (done := self._attempt(policy)) is None:
            self.export_id = None
        return done

    def _attempt(self, policy: RetryPolicy) -> CompletedExport | None:
        """One job, created here or an earlier run's, to its verified file; None: drop this
        job and create another."""
        reused = self.export_id is not None and self.status == JobStatus.NEW
        if self.export_id is None:
            self.export_id = self._create()
            self.on_created(self.export_id)
        try:
            outcome, status = self._follow(self.export_id)
        except FatalError as exc:
            if self.status != JobStatus.NEW:
                raise
            self._note(f"job of the last run is not usable ({exc}): creating a new one")
            return None
        if reused and outcome in (JobStatus.FAILED, JobStatus.CANCELLED):
            # Ended before this run saw it (cancelled by the last run's stop): not an
            # attempt of this run's.
            self._note(f"job of the last run is {outcome}: creating a new one")
            return None
        if outcome == JobStatus.COMPLETED:
            return self._verified_file(self.export_id, status, policy)
        if outcome == JobStatus.TIMEOUT:
            self._cancel(self.export_id)
        if not policy.another(outcome):
            raise JobFailed(self._failure(policy.why(outcome, self.timings.job_timeout)))
        return None

    def _verified_file(self, export_id: str, status: dict[str, Any],
                       policy: RetryPolicy) -> CompletedExport | None:
        """The Completed job's file, whole and as asked; None: create another job."""
        try:
            done = self._download(export_id, status)
            self._check_contents(done)
        except FileGone:
            if not policy.another(JobStatus.GONE):
                self.status = JobStatus.GONE
                raise JobFailed(self._failure("never served its file")) from None
            self._note("file gone (past Marketo's retention?): creating a new job")
            return None
        except FileRefused as refused:
            if not policy.another(JobStatus.REJECTED):
                raise
            logger.warning("%s: creating a new job.", refused)
            return None
        return done

    # -- steps --------------------------------------------------------------------------

    def _create(self) -> str:
        self._check_stop()
        job = self.client.result("POST", f"{EXPORT_PATH}/create.json", self.spec.body(),
                                 check=job_problem)
        export_id = str(job["exportId"])
        self.status = JobStatus.CREATED
        self._status_known_at = time.monotonic()
        self._note(f"created {export_id}")
        return export_id

    def _follow(self, export_id: str) -> tuple[JobStatus, dict[str, Any]]:
        """Enqueue if needed, then poll until a final status or the timeout."""
        if self.status == JobStatus.CREATED:  # just created here: nothing to ask
            status: dict[str, Any] = {"exportId": export_id, "status": JobStatus.CREATED}
        else:
            status = self._poll(export_id)
            self.completed_before = status.get("status") == JobStatus.COMPLETED
        deadline = time.monotonic() + self.timings.job_timeout
        wait = min(FIRST_POLL_SECONDS, self.timings.poll_interval)
        enqueued = False
        while True:
            state = JobStatus(status["status"])
            if state == JobStatus.CREATED:  # new, or an enqueue that did not take: enqueue (again)
                if enqueued:
                    self._note("still Created after its enqueue: enqueuing it again")
                self._enqueue(export_id)
                enqueued = True
                status = {"exportId": export_id, "status": JobStatus.QUEUED}
                continue
            if state in FINAL_STATUSES:
                if state != JobStatus.COMPLETED:
                    self._note(f"{state}: {status.get('errorMsg', 'no reason given')}")
                return state, status
            if time.monotonic() >= deadline:
                self._note(f"still {state} after {self.timings.job_timeout:.0f} s")
                return JobStatus.TIMEOUT, status
            self._sleep(wait)
            wait = min(wait * POLL_GROWTH, self.timings.poll_interval)
            status = self._poll(export_id)

    def _enqueue(self, export_id: str) -> None:
        deadline = time.monotonic() + self.timings.job_timeout
        while True:
            self._check_stop()
            if time.monotonic() > deadline:
                raise JobFailed(self._failure(
                    f"found Marketo's export queue full for {self.timings.job_timeout:.0f} s "
                    "(other tools' exports?)"))
            try:
                self.client.result("POST", f"{EXPORT_PATH}/{export_id}/enqueue.json")
                break
            except JobAlreadyQueued:
                break
            except QueueFull:
                wait = min(QUEUE_FULL_WAIT_SECONDS, max(self.timings.poll_interval, 1.0))
                logger.info("Export queue full (other jobs of the instance): retrying enqueue "
                            "of %s in %.0f s.", self.spec.label, wait)
                self._sleep(wait)
        self.status = JobStatus.QUEUED
        self._status_known_at = time.monotonic()  # a listing from before says Created
        self._note("queued")

    def _poll(self, export_id: str) -> dict[str, Any]:
        listed = self.board.status(export_id, self._status_known_at) if self.board else None
        if listed is not None:
            status = listed
        else:
            status = self.client.result("GET", f"{EXPORT_PATH}/{export_id}/status.json",
                                        check=job_problem)
        state = JobStatus(status["status"])  # job_problem: one of Marketo's
        if state != self.status:
            self.status = state
            self._note(state.lower())
        return status

    def _cancel(self, export_id: str) -> bool:
        # On the way out, one quick try: a cancel that fails is kept in the state.
        if cancel_export(self.client, export_id, once=self.stop.is_set()):
            self._note("cancelled")
            return True
        return False

    def cancel_if_running(self) -> None:
        if self.export_id and self.status in RUNNING_STATUSES and \
                self._cancel(self.export_id):
            self.status = JobStatus.CANCELLED

    # -- download -----------------------------------------------------------------------

    def _download(self, export_id: str, status: dict[str, Any]) -> CompletedExport:
        """The file, accepted only when verifiably whole: its sha256 is Marketo's
        fileChecksum, or else its size is fileSize; with neither, the HTTP lengths checked
        by `_fetch` (or its Range request past the end) and the row count checked when the
        file is read are what is left."""
        path = self.workdir / f"{export_id}.{self.spec.export_format.lower()}"
        expected = str(status.get("fileChecksum") or "").removeprefix("sha256:").lower()
        size = _count(status.get("fileSize"))
        records = _count(status.get("numberOfRecords"))
        if not expected and size is None:
            self._note("status has no fileChecksum or fileSize: checking the HTTP length, "
                       "then the rows against numberOfRecords"
                       + ("" if records is not None else " (absent too)"))
        for attempt in range(1, CHECKSUM_ATTEMPTS + 1):
            digest = self._fetch(export_id, path, size, confirm_end=not expected,
                                 end_needed=records is None)
            got = path.stat().st_size
            if expected and digest != expected:
                wrong = "sha256 of the file does not match Marketo's fileChecksum"
            elif not expected and size is not None and got != size:
                wrong = f"the file has {got} bytes where Marketo's fileSize says {size}"
            else:
                counted = "? records" if records is None else plural(records, "record")
                self._note(f"downloaded {got} bytes, {counted}")
                return CompletedExport(export_id, path, records, got, digest)
            logger.warning("Export %s: %s (attempt %d of %d): downloading it again.",
                           export_id, wrong, attempt, CHECKSUM_ATTEMPTS)
        path.unlink(missing_ok=True)
        raise FatalError(f"Export {export_id} ({self.spec.label}): the file was never whole "
                         f"({wrong}) in {CHECKSUM_ATTEMPTS} downloads. Nothing from this "
                         "window was bookmarked; run again later.")

    def _check_contents(self, done: CompletedExport) -> None:
        spec = self.spec
        try:
            check_file(done.path, spec.export_format, spec.fields, dict(spec.header_names),
                       f"export {done.export_id}")
        except FileRejected as exc:
            done.path.unlink(missing_ok=True)
            self.status = JobStatus.REJECTED
            self._note("file refused")
            raise FileRefused(f"Export for {spec.label}: {exc}") from None

    def _fetch(self, export_id: str, path: Path, size: int | None, *,
               confirm_end: bool = False, end_needed: bool = False) -> str:
        """Download to `path`, resuming with Range after a break: a body that ends before
        its Content-Length (or Content-Range total, or fileSize) is a break. A body whose
        end nothing gives is confirmed by `_confirmed_end` when `confirm_end`. Returns the
        sha256."""
        hasher = hashlib.sha256()
        received = 0
        breaks = 0
        not_ready = 0
        url = f"{EXPORT_PATH}/{export_id}/file.json"
        with path.open("wb") as out:
            while True:
                self._check_stop()
                try:
                    response = self.client.open_file(url, received)
                    if received and response.status_code != 206:
                        out.seek(0)
                        out.truncate()
                        hasher, received = hashlib.sha256(), 0
                    promised = _promised_total(response, received)
                    with response:
                        for chunk in response.iter_content(CHUNK_BYTES):
                            self._check_stop()
                            out.write(chunk)
                            hasher.update(chunk)
                            received += len(chunk)
                            self.received = received
                    total = promised if promised is not None else size
                    if total is None and confirm_end:
                        total = self._confirmed_end(export_id, url, received, end_needed)
                    if total is None or received >= total:
                        return hasher.hexdigest()
                    raise requests.ConnectionError(f"stream ended at byte {received} of "
                                                   f"{total}")
                except FileNotReady:
                    not_ready += 1
                    if not_ready >= FILE_NOT_READY_TRIES:
                        raise FileGone(f"Export {export_id}: file.json answers 404") from None
                    self._sleep(float(not_ready))
                except requests.RequestException as exc:
                    breaks += 1
                    if breaks > DOWNLOAD_RESUMES:
                        raise FatalError(
                            f"Export {export_id} ({self.spec.label}): the download broke "
                            f"{breaks} times ({excerpt(self.client.redact(str(exc)))}). "
                            "Nothing from this window was bookmarked; run again later."
                        ) from None
                    logger.warning("Download of %s broke at byte %d of %s (%s): resuming.",
                                   export_id, received, size,
                                   self.client.redact(type(exc).__name__))

    def _confirmed_end(self, export_id: str, url: str, received: int,
                       needed: bool) -> int | None:
        """The file's length, asked with a Range request from the byte after the body: 416
        with `Content-Range: bytes */<n>` gives n; a 206 means the body was cut (a break,
        resumed). None when the server does not say and `needed` is false (the row count
        checks the file); when needed, the file is refused: nothing could show it whole."""
        if received == 0:
            raise requests.ConnectionError("the body was empty")
        try:
            response = self.client.open_file(url, received)
        except PastTheEnd as past:
            if past.total is not None:
                return past.total
            reason = "answered 416 without the file's length"
        else:
            response.close()
            if response.status_code == 206:
                raise requests.ConnectionError(f"the body ended at byte {received}, "
                                               "the file goes on")
            reason = "ignored a Range request past its end"
        if not needed:
            return None
        raise FatalError(f"Export {export_id} ({self.spec.label}): Marketo gave no fileSize, "
                         "fileChecksum or numberOfRecords, the file came without "
                         f"Content-Length and {reason}, so nothing confirms that it is "
                         "whole. Nothing from this window was bookmarked; run again later, "
                         "and if it persists, report it to Marketo support with this line.")

    # -- helpers ------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            self._stopping()

    def _check_stop(self) -> None:
        if self.stop.is_set():
            self._stopping()

    def _stopping(self) -> None:
        self.cancel_if_running()
        raise Stopped(self.spec.label)

    def _note(self, event: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {event}"
        self.story.append(line)
        logger.info("Export %s: %s", self.spec.label, event)

    def _failure(self, what: str) -> str:
        return (f"Export job for {self.spec.label} {what}. Its story: "
                f"{'; '.join(self.story[-8:])}. Nothing after the last finished window was "
                "bookmarked; run again to retry.")


def _count(value: Any) -> int | None:
    """A count from a job status (numberOfRecords, fileSize); None when absent or odd."""
    if isinstance(value, bool):
        return None
    try:
        return int(value) if value is not None and int(value) >= 0 else None
    except (TypeError, ValueError):
        return None


def _promised_total(response: requests.Response, first_byte: int) -> int | None:
    """Where HTTP says the file ends: the Content-Range total, or Content-Length after
    where this response starts. None when it says nothing (a close-delimited body)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length", "")
    start = first_byte if response.status_code == 206 else 0
    return start + int(length) if length.strip().isdigit() else None


def cancel_export(client: MarketoClient, export_id: str, *, once: bool) -> bool:
    """Cancel one of our exports; best effort, False when Marketo did not take it."""
    try:
        client.result("POST", f"{EXPORT_PATH}/{export_id}/cancel.json", once=once)
    except Exception as exc:
        logger.warning("Could not cancel export %s: %s", export_id, exc)
        return False
    return True


def keep_raw_file(done: CompletedExport, spec: JobSpec, folder: Path) -> Path:
    """Copy an export file, as Marketo sent it, into `folder` with a JSON sidecar."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = (f"{spec.start:%Y%m%dT%H%M%SZ}_{spec.end:%Y%m%dT%H%M%SZ}_{done.export_id}")
    target = folder / f"{stem}.{spec.export_format.lower()}"
    shutil.copyfile(done.path, target)
    sidecar = {"exportId": done.export_id, **spec.key(), "body": spec.body(),
               "fileChecksum": f"sha256:{done.checksum}", "fileSize": done.file_size,
               "numberOfRecords": done.records, "file": target.name}
    (folder / f"{stem}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return target
