"""An export job's retries (export.ExportJob) against a small fake Marketo client."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from typing_extensions import override

from tap_marketo_activities.client import FileNotReady, MarketoClient
from tap_marketo_activities.export import ExportJob, JobFailed, JobSpec, JobTimings
from tap_marketo_activities.schema import EXPORT_COLUMNS

FILE = (",".join(EXPORT_COLUMNS) + "\n"
        + "g1,5,2024-01-01T00:00:00Z,1,null,null,null,null,null\n").encode()
SPEC = JobSpec(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
               dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc), (1,))


class NoWait(threading.Event):
    """A stop event that is never set and never makes anyone wait."""

    @override
    def wait(self, timeout: float | None = None) -> bool:
        return False


class FakeFile:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status_code = 200
        self.headers = {"Content-Length": str(len(body))}

    def iter_content(self, size: int) -> list[bytes]:
        return [self.body]

    def __enter__(self) -> FakeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class FakeMarketo:
    """The export endpoints as ExportJob calls them. `statuses[n]`: what the n-th job's
    status calls answer, one after the other (the last one again and again); `missing`:
    jobs whose file answers 404."""

    def __init__(self, statuses: list[list[str]], missing: frozenset[str] = frozenset()
                 ) -> None:
        self.statuses = statuses
        self.missing = missing
        self.created: list[str] = []
        self.enqueued: list[str] = []
        self.downloads: list[str] = []

    def result(self, method: str, path: str, body: Any = None, *, once: bool = False,
               check: Any = None) -> dict[str, Any]:
        if path.endswith("/create.json"):
            self.created.append(f"e{len(self.created) + 1}")
            return {"exportId": self.created[-1], "status": "Created"}
        export_id = path.split("/")[-2]
        if path.endswith("/enqueue.json"):
            self.enqueued.append(export_id)
            return {"exportId": export_id, "status": "Queued"}
        if path.endswith("/status.json"):
            script = self.statuses[int(export_id[1:]) - 1]
            status = script.pop(0) if len(script) > 1 else script[0]
            return {"exportId": export_id, "status": status, "numberOfRecords": 1,
                    "fileSize": len(FILE),
                    "fileChecksum": "sha256:" + hashlib.sha256(FILE).hexdigest()}
        return {"exportId": export_id, "status": "Cancelled"}  # cancel.json

    def open_file(self, path: str, first_byte: int = 0) -> FakeFile:
        export_id = path.split("/")[-2]
        self.downloads.append(export_id)
        if export_id in self.missing:
            raise FileNotReady(f"{path} answered 404")
        return FakeFile(FILE)

    def redact(self, text: str) -> str:
        return text


def job(fake: FakeMarketo, tmp_path: Path, attempts: int = 3) -> ExportJob:
    timings = JobTimings(poll_interval=1.0, job_timeout=3600.0, max_attempts=attempts)
    return ExportJob(client=cast(MarketoClient, fake), spec=SPEC, workdir=tmp_path,
                     timings=timings, stop=NoWait())


def test_a_completed_job_is_downloaded_and_checked(tmp_path: Path) -> None:
    fake = FakeMarketo([["Processing", "Completed"]])
    done = job(fake, tmp_path).run()
    assert (done.export_id, done.records, done.file_size) == ("e1", 1, len(FILE))
    assert done.path.read_bytes() == FILE
    assert fake.created == ["e1"] and fake.enqueued == ["e1"]


def test_a_failed_job_is_created_again(tmp_path: Path) -> None:
    fake = FakeMarketo([["Failed"], ["Completed"]])
    done = job(fake, tmp_path).run()
    assert done.export_id == "e2"
    assert fake.created == ["e1", "e2"]


def test_a_job_failing_max_attempts_times_fails_the_window(tmp_path: Path) -> None:
    fake = FakeMarketo([["Failed"], ["Failed"], ["Failed"], ["Completed"]])
    with pytest.raises(JobFailed, match="Failed 3 times"):
        job(fake, tmp_path, attempts=3).run()
    assert fake.created == ["e1", "e2", "e3"]
    assert fake.downloads == []


def test_a_job_still_created_after_its_enqueue_is_enqueued_again(tmp_path: Path) -> None:
    fake = FakeMarketo([["Created", "Completed"]])
    running = job(fake, tmp_path)
    assert running.run().export_id == "e1"
    assert fake.enqueued == ["e1", "e1"]
    assert any("enqueuing it again" in line for line in running.story)


def test_a_file_gone_gets_a_new_job(tmp_path: Path) -> None:
    fake = FakeMarketo([["Completed"], ["Completed"]], missing=frozenset({"e1"}))
    done = job(fake, tmp_path).run()
    assert done.export_id == "e2"
    assert fake.created == ["e1", "e2"]
    assert fake.downloads.count("e1") > 1  # a 404 right after Completed is waited for


def test_a_file_never_served_fails_after_max_attempts(tmp_path: Path) -> None:
    fake = FakeMarketo([["Completed"], ["Completed"]], missing=frozenset({"e1", "e2"}))
    with pytest.raises(JobFailed, match="never served its file"):
        job(fake, tmp_path, attempts=2).run()
    assert fake.created == ["e1", "e2"]
