"""What each endpoint answers; HTTP plumbing lives in server.py."""

from __future__ import annotations

import base64
import collections
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from .catalog import DELETE_LEAD, activity_types
from .data import Dataset, to_time
from .deleted import DeletedLeads
from .jobs import OURS, ApiError, Job, JobBoard, parse_create
from .limits import FILE_DEFECTS, ODD_KINDS, CallLimits, Faults, day_key
from .odd import RestOdd
from .rest import ActivityLog, parse_type_ids
from .tokens import Token, encode

JSON_TYPE = "application/json;charset=UTF-8"
EXPORT = "/bulk/v1/activities/export"
API_USER = "apiuser@sandbox.example"  # the token's scope; Get Daily Usage's userId
ACTIVE = {"Created", "Queued", "Processing"}
MIB = 1024 * 1024


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FileSend:
    path: str
    start: int
    end: int
    total: int
    corrupt: bool = False
    cut: int | None = None
    stall: float = 0.0
    close_delimited: bool = False  # no Content-Length: the end is where the socket closes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    admitted: bool = False
    file: FileSend | None = None


@dataclass
class Settings:
    client_id: str
    client_secret: str
    token_ttl: float
    end_inclusive: bool
    export_quota_bytes: int
    delimiters: dict[str, str]


def text_reply(status: int, text: str, content_type: str = "text/plain;charset=UTF-8"
               ) -> Reply:
    return Reply(status=status, body=text.encode("utf-8"), content_type=content_type)


ODD_INSTEAD = set(ODD_KINDS) - {"unknown_status"}
EVERY_TYPE = frozenset(t["id"] for t in activity_types())

ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/rest/v1/activities/types.json", "types"),
    ("GET", "/rest/v1/activities/pagingtoken.json", "paging_token"),
    ("GET", "/rest/v1/activities/deletedleads.json", "deleted_leads"),
    ("GET", "/rest/v1/activities.json", "activities"),
    ("GET", "/rest/v1/stats/usage.json", "usage"),
    ("POST", EXPORT + "/create.json", "create"),
    ("POST", EXPORT + "/{exportId}/enqueue.json", "enqueue"),
    ("GET", EXPORT + "/{exportId}/status.json", "status"),
    ("GET", EXPORT + "/{exportId}/file.json", "file"),
    ("POST", EXPORT + "/{exportId}/cancel.json", "cancel"),
    ("GET", EXPORT + ".json", "list_jobs"),
]
COMPILED = [(method, template, name,
             re.compile("^" + re.escape(template).replace(r"\{exportId\}", "([^/]+)") + "$"))
            for method, template, name in ROUTES]


def find_route(method: str, path: str) -> tuple[str, str, list[str]] | None:
    for route_method, template, name, pattern in COMPILED:
        found = pattern.match(path)
        if found and method == route_method:
            return template, name, list(found.groups())
    return None


class Service:
    def __init__(self, seed: int, dataset: Dataset, settings: Settings, limits: CallLimits,
                 board: JobBoard, lock: threading.RLock) -> None:
        self.seed = seed
        self.dataset = dataset
        self.settings = settings
        self.limits = limits
        self.board = board
        self.lock = lock
        self.deleted = DeletedLeads(seed, dataset)
        self.log = ActivityLog(dataset)
        self.faults = Faults()
        self.rest_odd = RestOdd()  # Get Lead Activities
        self.deleted_odd = RestOdd()  # Get Deleted Leads
        self.fault_rng = random.Random(f"{seed}:faults")
        self.id_rng = random.Random(f"{seed}:ids")
        self.calls: collections.Counter[str] = collections.Counter()
        # Calls by route name that passed the limits (what Marketo counts against the day).
        self.admitted_calls: collections.Counter[str] = collections.Counter()
        self.injected: collections.Counter[str] = collections.Counter()
        self.tokens: dict[str, float] = {}
        self.current_token: str | None = None
        self.quota_607_left: int | None = None
        self.request_count = 0
        self.token_calls = 0
        self.types_calls = 0

    # ---- envelope helpers -------------------------------------------------

    def request_id(self) -> str:
        with self.lock:
            self.request_count += 1
            number = self.request_count
        return f"{self.seed % 0xffff:x}{number:05x}#{number * 2654435761 % 16 ** 11:011x}"

    def ok(self, result: list[Any] | None, **extra: Any) -> Reply:
        body: dict[str, Any] = {"requestId": self.request_id(), "success": True}
        if result is not None:
            body["result"] = result
        body.update(extra)
        return Reply(body=json.dumps(body, ensure_ascii=False).encode("utf-8"))

    def error(self, code: str, message: str | None = None) -> Reply:
        body = {"requestId": self.request_id(), "success": False,
                "errors": [{"code": code, "message": message or self.limits.message(code)}]}
        return Reply(body=json.dumps(body).encode("utf-8"))

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.id_rng.getrandbits(128), version=4))

    # ---- entry point ------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        if request.path == "/identity/oauth/token" and request.method in ("GET", "POST"):
            with self.lock:
                self.calls[f"{request.method} /identity/oauth/token"] += 1
                target = self.faults.redirect_identity_to
            if target:
                return self.redirect(target, request)
            return self.token(request)
        if self.faults.redirect_calls_to:
            return self.redirect(self.faults.redirect_calls_to, request)
        route = find_route(request.method, request.path)
        if route is None:
            return text_reply(404, "Not Found")
        template, name, params = route
        with self.lock:
            self.calls[f"{request.method} {template}"] += 1
            if self.faulty(name) and self.chance(self.faults.reset_rate):
                self.injected["reset"] += 1
                return Reply(reset=True)
            refused = self.gate()
            if not refused:
                self.admitted_calls[name] += 1
        if refused:
            return self.error(refused)
        try:
            reply = self.admitted(request, name, params)
        except Exception:
            self.release()
            raise
        reply.admitted = True
        return reply

    def release(self) -> None:
        with self.lock:
            self.limits.release()

    def faulty(self, route: str) -> bool:
        """Whether the transport and error faults hit this route (Faults.routes)."""
        return not self.faults.routes or route in self.faults.routes

    def chance(self, rate: float) -> bool:
        return rate > 0 and self.fault_rng.random() < rate

    def gate(self) -> str | None:
        if self.quota_607_left is not None:
            if self.quota_607_left <= 0:
                self.limits.refused["607"] += 1
                return "607"
            self.quota_607_left -= 1
        return self.limits.admit()

    def admitted(self, request: Request, name: str, params: list[str]) -> Reply:
        with self.lock:
            hit = self.faulty(name)
            stall = hit and self.chance(self.faults.stall_rate)
            stall_seconds = self.faults.stall_seconds
            if stall:
                self.injected["stall"] += 1
        if stall:
            time.sleep(stall_seconds)
        with self.lock:
            injected = self.transport_fault() if hit else None
        if injected is not None:
            return injected
        problem = self.auth(request)
        if problem:
            return self.error(problem)
        handler: Callable[..., Reply] = getattr(self, name)
        try:
            with self.lock:
                odd = self.odd_kind(name)
                if odd in ODD_INSTEAD:
                    return self.odd_instead(odd, params)
                reply = handler(request, *params)
                return self.odd_after(odd, reply) if odd else reply
        except ApiError as exc:
            return self.error(exc.code, exc.message)

    # ---- odd answers ----------------------------------------------------------

    def redirect(self, target: str, request: Request) -> Reply:
        """A redirect elsewhere, keeping the path and query (an HTTPS upgrade would)."""
        self.injected["redirect"] += 1
        query = "&".join(f"{k}={v}" for k, v in request.query.items())
        location = f"{target.rstrip('/')}{request.path}" + (f"?{query}" if query else "")
        return Reply(status=302, body=b"", content_type="text/plain",
                     headers={"Location": location})

    def odd_kind(self, route: str) -> str:
        faults = self.faults
        kind = faults.odd_answers.get(route, "")
        if not kind:
            return ""
        if kind not in ODD_KINDS:
            raise ValueError(f"unknown odd answer {kind!r}")
        done = self.injected[f"odd {route}"]
        if 0 <= faults.odd_answer_times <= done:
            return ""
        self.injected[f"odd {route}"] += 1
        return kind

    def odd_instead(self, kind: str, params: list[str]) -> Reply:
        """An answer in place of the call's: nothing happened on Marketo's side."""
        if kind == "not_envelope":
            return Reply(body=b'{"message":"Service temporarily unavailable","status":503}')
        if kind == "empty_result":
            return self.ok([])
        if kind == "null_result":
            return Reply(body=json.dumps({"requestId": self.request_id(), "success": True,
                                          "result": None}).encode())
        if kind == "list_result":
            return self.ok([[{"exportId": params[0] if params else "x"}]])
        if kind == "no_export_id":
            return self.ok([{"status": "Created", "format": "CSV"}])
        if kind == "stays_created":
            return self.ok([{"exportId": params[0] if params else "x", "status": "Created"}])
        if kind == "no_success":
            return Reply(body=json.dumps({"requestId": self.request_id()}).encode())
        if kind == "html":
            return text_reply(200, "<html><head><title>Maintenance</title></head><body>"
                              "<h1>We'll be back soon</h1></body></html>", "text/html")
        return Reply(body=json.dumps({"requestId": self.request_id(), "success": True,
                                      "result": []}).encode())  # json_file

    def odd_after(self, kind: str, reply: Reply) -> Reply:
        """The call's own answer, with a job status Marketo does not have."""
        body = json.loads(reply.body)
        for job in body.get("result") or []:
            job["status"] = "Pending Review"
        reply.body = json.dumps(body).encode()
        return reply

    def transport_fault(self) -> Reply | None:
        if self.chance(self.faults.http_5xx_rate):
            status = self.fault_rng.choice([502, 503])
            self.injected[str(status)] += 1
            title = "502 Bad Gateway" if status == 502 else "503 Service Unavailable"
            html = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
            return text_reply(status, html, "text/html")
        rates = self.faults.error_rate
        if rates:
            roll, total = self.fault_rng.random(), 0.0
            for code, rate in rates.items():
                total += rate
                if roll < total:
                    self.injected[code] += 1
                    if code in ("601", "602"):
                        self.revoke_token()
                    return self.error(code)
        return None

    # ---- identity -----------------------------------------------------------

    def token(self, request: Request) -> Reply:
        params = dict(request.query)
        if request.body and "json" not in request.headers.get("content-type", ""):
            params.update(form_fields(request.body))
        if params.get("grant_type") != "client_credentials":
            body: dict[str, Any] = {"error": "unsupported_grant_type",
                                    "error_description": "grant_type must be client_credentials"}
            return Reply(status=400, body=json.dumps(body).encode())
        if (params.get("client_id") != self.settings.client_id
                or params.get("client_secret") != self.settings.client_secret):
            body = {"error": "invalid_client", "error_description": "Bad client credentials"}
            return Reply(status=401, body=json.dumps(body).encode())
        with self.lock:
            self.token_calls += 1
            token, expiry = self.live_token()
        body = {"access_token": token, "token_type": "bearer",
                "expires_in": max(0, int(expiry - time.monotonic())),
                "scope": API_USER}
        return Reply(body=json.dumps(body).encode())

    def live_token(self) -> tuple[str, float]:
        now = time.monotonic()
        token = self.current_token
        if token is None or self.tokens.get(token, 0) <= now + 1:
            token = f"{self.new_id()}:ab"
            self.tokens[token] = now + self.settings.token_ttl
            self.current_token = token
        return token, self.tokens[token]

    def revoke_token(self) -> None:
        if self.current_token is not None:
            self.tokens[self.current_token] = 0.0
            self.current_token = None

    def auth(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        token = token or request.query.get("access_token")
        with self.lock:
            expiry = self.tokens.get(token or "")
        if expiry is None:
            return "601"
        if expiry <= time.monotonic():
            return "602"
        return None

    # ---- REST ---------------------------------------------------------------

    def types(self, request: Request) -> Reply:
        self.types_calls += 1
        return self.ok(activity_types())

    def paging_token(self, request: Request) -> Reply:
        since = request.query.get("sinceDatetime")
        if not since:
            raise ApiError("1003", "sinceDatetime is required")
        try:
            moment = to_time(datetime.fromisoformat(since.replace("Z", "+00:00")))
        except ValueError:
            raise ApiError("1003", f"Invalid sinceDatetime {since!r}") from None
        return self.ok(None, nextPageToken=encode(Token(moment)))

    def deleted_leads(self, request: Request) -> Reply:
        token = request.query.get("nextPageToken")
        if not token:
            raise ApiError("1003", "nextPageToken is required")
        size = batch_size(request.query)
        rows, next_token, more = self.deleted.page(token, size)
        fields = self.deleted_odd.answer(
            {"result": rows, "nextPageToken": next_token, "moreResult": more}, token,
            frozenset({DELETE_LEAD}), lambda: rows)
        result = fields.pop("result", None)
        return self.ok(result or None, **fields)

    def activities(self, request: Request) -> Reply:
        type_ids = parse_type_ids(request.query.get("activityTypeIds"))
        token = request.query.get("nextPageToken")
        if not token:
            raise ApiError("1003", "nextPageToken is required")
        size = batch_size(request.query)
        rows, next_token, more = self.log.page(token, type_ids, size)
        fields = self.rest_odd.answer(
            {"result": rows, "nextPageToken": next_token, "moreResult": more}, token,
            type_ids, lambda: self.log.page(token, EVERY_TYPE, size)[0])
        result = fields.pop("result", None)
        return self.ok(result or None, **fields)  # as Marketo: no result on an empty page

    def usage(self, request: Request) -> Reply:
        """Get Daily Usage: the calls admitted today (US Central), per API user."""
        limits = self.limits
        users = {API_USER: limits.day_calls - sum(limits.other_calls.values()),
                 **limits.other_calls}
        return self.ok([{"date": day_key(), "total": limits.day_calls,
                         "users": [{"userId": user, "count": count}
                                   for user, count in users.items()]}])

    # ---- bulk export --------------------------------------------------------

    def check_quota(self) -> None:
        quota = self.settings.export_quota_bytes
        if self.board.bytes_today() >= quota:
            size = f"{quota // MIB}MB" if quota >= MIB else f"{quota}B"
            raise ApiError("1029", f"Export daily quota {size} exceeded.")

    def create(self, request: Request) -> Reply:
        content_type = request.headers.get("content-type", "application/json")
        if "json" not in content_type:
            raise ApiError("612", f"Invalid Content Type {content_type}")
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            raise ApiError("609", "Invalid JSON") from None
        self.check_quota()
        spec, start_at, end_at, type_ids = parse_create(
            body, self.dataset, self.settings.end_inclusive, self.settings.delimiters)
        if self.log.late is not None and self.log.late.on:
            spec.keys = self.log.late.export_keys(to_time(start_at), to_time(end_at),
                                                  self.settings.end_inclusive)
        spec.shuffle_seed = self.id_rng.getrandbits(32)
        spec.dirty = self.faults.dirty_rows
        if self.faults.file_defect not in ("", *FILE_DEFECTS):
            raise ValueError(f"unknown file defect {self.faults.file_defect!r}")
        spec.defect = self.faults.file_defect
        spec.foreign_rows = self.faults.foreign_type_rows
        spec.shape = self.faults.file_shape
        job = Job(export_id=self.new_id(), owner=OURS, format=str(body.get("format", "CSV")
                  ).upper(), spec=spec, start_at=start_at, end_at=end_at, type_ids=type_ids)
        self.board.jobs[job.export_id] = job
        return self.ok([job.public()])

    def job(self, export_id: str) -> Job:
        job = self.board.mine(export_id)
        if job is None:
            raise ApiError("1003", f"Export id {export_id} not found")
        return job

    def enqueue(self, request: Request, export_id: str) -> Reply:
        job = self.job(export_id)
        self.check_quota()
        if job.status in ("Queued", "Processing"):
            raise ApiError("1029", "Job already queued")
        if job.status != "Created":
            raise ApiError("1003", f"Job {export_id} has status {job.status}")
        faults = self.faults
        if faults.queue_full_times > 0 or self.board.active() >= self.board.queue_limit:
            faults.queue_full_times = max(0, faults.queue_full_times - 1)
            raise ApiError("1029", "Too many jobs in queue")
        job.stuck, faults.stuck_jobs = faults.stuck_jobs > 0, max(0, faults.stuck_jobs - 1)
        job.doomed, faults.fail_jobs = faults.fail_jobs > 0, max(0, faults.fail_jobs - 1)
        job.miscounted = faults.miscount_jobs > 0
        faults.miscount_jobs = max(0, faults.miscount_jobs - 1)
        self.board.enqueue(job)
        if faults.already_queued_times > 0:
            faults.already_queued_times -= 1
            raise ApiError("1029", "Job already queued")
        return self.ok([job.public()])

    def status(self, request: Request, export_id: str) -> Reply:
        self.board.advance()
        return self.ok([self.job(export_id).public(self.faults.hide_status_fields)])

    def cancel(self, request: Request, export_id: str) -> Reply:
        job = self.job(export_id)
        if job.status in ACTIVE:
            self.board.cancel(job)
        return self.ok([job.public()])

    def list_jobs(self, request: Request) -> Reply:
        self.board.advance()
        wanted = request.query.get("status")
        statuses = {s.strip() for s in wanted.split(",") if s.strip()} if wanted else None
        size = batch_size(request.query)
        offset = decode_offset(request.query.get("nextPageToken"))
        jobs = self.board.listed(statuses)
        page = [job.public(self.faults.hide_status_fields) for job in jobs[offset:offset + size]]
        if offset + size < len(jobs):
            return self.ok(page, nextPageToken=encode_offset(offset + size))
        return self.ok(page)

    def file(self, request: Request, export_id: str) -> Reply:
        self.board.advance()
        job = self.board.mine(export_id)
        if job is None or job.status != "Completed" or job.result is None or not job.path:
            return text_reply(404, "File not found")
        job.file_attempts += 1
        if self.faults.expire_files or job.file_attempts <= self.faults.file_404_times:
            self.injected["file_404"] += 1
            return text_reply(404, "File not found")
        total = job.result.size
        asked = None if self.faults.ignore_ranges else request.headers.get("range")
        span = parse_range(asked, total)
        if span is None:
            return Reply(status=416, body=b"Requested range not satisfiable",
                         content_type="text/plain", headers={"Content-Range": f"bytes */{total}"})
        send = FileSend(path=job.path, start=span[0], end=span[1], total=total,
                        corrupt=job.downloads < self.faults.corrupt_download_times,
                        close_delimited=self.faults.close_delimited_files)
        if job.downloads < self.faults.cut_file_times and span[1] > span[0]:
            self.injected["cut_file"] += 1
            send.cut = cut_at_line_end(job.path, span[0], (span[1] - span[0] + 1) * 2 // 5)
        job.downloads += 1
        self.download_faults(send)
        partial = span != (0, total - 1) or asked is not None
        return Reply(status=206 if partial else 200, content_type="text/csv", file=send)

    def download_faults(self, send: FileSend) -> None:
        length = send.end - send.start + 1
        if length < 2 or send.cut is not None:
            return
        if self.chance(self.faults.break_download_rate):
            self.injected["break_download"] += 1
            send.cut = self.fault_rng.randint(1, length - 1)
        elif self.chance(self.faults.stall_download_rate):
            self.injected["stall_download"] += 1
            send.cut = self.fault_rng.randint(1, length - 1)
            send.stall = self.faults.stall_seconds


def form_fields(body: bytes) -> dict[str, str]:
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


def batch_size(query: dict[str, str]) -> int:
    raw = query.get("batchSize", "300")
    if not raw.isdigit() or not 1 <= int(raw) <= 300:
        raise ApiError("1003", "batchSize must be between 1 and 300")
    return int(raw)


def encode_offset(offset: int) -> str:
    return base64.b32encode(f"offset:{offset}".encode()).decode().rstrip("=")


def decode_offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        padded = token + "=" * (-len(token) % 8)
        return int(base64.b32decode(padded).decode().split(":")[1])
    except (ValueError, IndexError):
        raise ApiError("1003", "Invalid nextPageToken") from None


def cut_at_line_end(path: str, start: int, cut: int) -> int:
    """Where a download from `start` that stops near `cut` bytes ends on a line end, as a
    cut that row parsing cannot notice would."""
    with open(path, "rb") as source:
        source.seek(start + cut)
        rest = source.readline()
    return cut + len(rest) if rest.endswith(b"\n") else cut


def parse_range(header: str | None, total: int) -> tuple[int, int] | None:
    if not header:
        return 0, total - 1
    found = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not found or (not found.group(1) and not found.group(2)):
        return None
    first, last = found.group(1), found.group(2)
    if not first:
        start = max(0, total - int(last))
        return (start, total - 1) if total else None
    start = int(first)
    end = min(int(last), total - 1) if last else total - 1
    if start >= total or end < start:
        return None
    return start, end
