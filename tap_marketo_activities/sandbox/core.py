"""The public Sandbox object: a fake Marketo REST/Bulk API on 127.0.0.1."""

from __future__ import annotations

import shutil
import tempfile
import threading
from datetime import datetime, timezone
from typing import Any

from .catalog import activity_types
from .data import Dataset, matches, to_time
from .jobs import OURS, JobBoard
from .late import Late, key_of
from .limits import CallLimits, Faults
from .odd import REST_ODD_KINDS, RestOdd
from .purge import Purge
from .rest import rest_form
from .server import SandboxServer
from .service import ROUTES, Service, Settings

TICK = 0.01


class Sandbox:
    def __init__(
        self,
        seed: int = 7,
        data_start: str = "2024-01-01T00:00:00Z",
        data_end: str | None = "2024-07-01T00:00:00Z",
        activities_per_day: int = 48,
        job_latency: float = 0.3,
        processing_slots: int = 2,
        queue_limit: int = 10,
        rate_limit_calls: int = 100,
        rate_limit_window: float = 20.0,
        concurrency_limit: int = 10,
        daily_call_limit: int = 50000,
        export_quota_bytes: int = 500 * 1024 * 1024,
        token_ttl: float = 3600,
        end_inclusive: bool = True,
        client_id: str = "sandbox-client",
        client_secret: str = "sandbox-secret-do-not-log",
        port: int = 0,
        ssv_delimiter: str = ";",
        merge_ids: str = "brackets",
        bad_merge_ids_every: int = 0,
        late: bool = False,
        bulk_by: str = "date",
        rest_order: str = "date",
        purge: bool = False,
        retention_months: int = 25,
    ) -> None:
        """data_end None (or "now"): live data, up to the clock; activities keep appearing.
        merge_ids: how Merge Leads write `Merge IDs` (merges.MERGE_IDS_STYLES: "brackets"
        `[1,2]` as Marketo, "plain" `1,2`, "spaced" `[1, 2]`, "mixed" the three in turn);
        bad_merge_ids_every N: every Nth merge writes a value that is no list of integers.
        late: some activities are committed after their date (late.py), and shown only
        from then on; bulk_by "date" or "commit": what the createdAt filter selects by;
        rest_order "date" or "commit": how Get Lead Activities pages.
        purge: Marketo's purge (purge.py): activities older than their type's retention
        at the sandbox's clock are gone; retention_months: 25, or 37 (the paid option)."""
        self.data_start = data_start
        self.end_inclusive = end_inclusive
        self.port = port
        self.lock = threading.RLock()
        self.dataset = Dataset(seed, data_start, None if data_end == "now" else data_end,
                               activities_per_day, merge_ids, bad_merge_ids_every)
        self.workdir = ""
        self.board = JobBoard(self.dataset, self.workdir, job_latency, processing_slots,
                              queue_limit, self.lock)
        settings = Settings(client_id=client_id, client_secret=client_secret,
                            token_ttl=token_ttl, end_inclusive=end_inclusive,
                            export_quota_bytes=export_quota_bytes,
                            delimiters={"CSV": ",", "TSV": "\t", "SSV": ssv_delimiter})
        limits = CallLimits(rate_limit_calls, rate_limit_window, concurrency_limit,
                            daily_call_limit)
        self.service = Service(seed, self.dataset, settings, limits, self.board, self.lock)
        self.late = Late(self.dataset, late, bulk_by, rest_order)
        self.dataset.purge = Purge(self.dataset, purge, retention_months)
        self.service.log.late = self.late
        self.server: SandboxServer | None = None
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    # ---- lifecycle ------------------------------------------------------------

    def start(self) -> str:
        if self.server is not None:
            return self.base_url
        self.workdir = tempfile.mkdtemp(prefix="marketo-sandbox-")
        self.board.workdir = self.workdir
        self.server = SandboxServer(self.port, self.service)
        self.threads = [
            threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True, name="sandbox-http"),
            threading.Thread(target=self.tick, daemon=True, name="sandbox-jobs"),
        ]
        for thread in self.threads:
            thread.start()
        return self.base_url

    def tick(self) -> None:
        while not self.stopping.wait(TICK):
            with self.lock:
                self.board.advance()

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            self.board.closed = True
            for job in self.board.jobs.values():
                job.cancelled.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        for thread in self.threads:
            thread.join(timeout=5)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self.server is None:
            raise RuntimeError("Sandbox is not started")
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def config(self) -> dict[str, Any]:
        settings = self.service.settings
        return {"client_id": settings.client_id, "client_secret": settings.client_secret,
                "base_url": self.base_url, "start_date": self.data_start}

    # ---- data -------------------------------------------------------------------

    def activity_types(self) -> list[dict[str, Any]]:
        return activity_types()

    def expected(self, start: str | datetime, end: str | datetime,
                 type_ids: list[int] | None = None,
                 primary_ids: list[Any] | None = None,
                 primary_values: list[str] | None = None) -> list[dict[str, Any]]:
        """What a job with this createdAt window and filters returns, in log order."""
        keys = self.dataset.keys_between(to_time(start), to_time(end), self.end_inclusive)
        wanted = frozenset(type_ids) if type_ids else None
        ids = frozenset(primary_ids) if primary_ids else None
        values = frozenset(primary_values) if primary_values else None
        rows = []
        for key in keys:
            if wanted is not None and self.dataset.type_id(key) not in wanted:
                continue
            activity = self.dataset.activity(key)
            if matches(activity, None, ids, values) and self.dataset.kept(key):
                rows.append(activity)
        return rows

    def expected_rest(self, start: str | datetime, end: str | datetime | None = None,
                      type_ids: list[int] | None = None) -> list[dict[str, Any]]:
        """What Get Lead Activities pages from `start` (inclusive) return, in order, up to
        `end` (exclusive) or what can be seen now; all types but Delete Lead by default."""
        return self.service.log.expected(start, end, type_ids)

    @staticmethod
    def rest_form(activity: dict[str, Any]) -> dict[str, Any]:
        """An activity of expected() as activities.json serves it."""
        return rest_form(activity)

    def expected_merged_leads(self, start: str | datetime, end: str | datetime
                              ) -> list[dict[str, Any]]:
        """One record per (Merge Leads activity, lead merged away) of this createdAt
        window: marketoGUID, activityDate, leadId (kept), mergedLeadId; none for merges
        whose `Merge IDs` is no list of integers."""
        merges = self.dataset.merge_range(to_time(start), to_time(end), self.end_inclusive)
        return [pair for k in merges for pair in self.dataset.merges.merged_leads(k)]

    def expected_deleted_leads(self, since: str) -> list[dict[str, Any]]:
        return self.service.deleted.expected(since)

    # ---- late activities and the clock --------------------------------------------

    def set_clock(self, clock: str | datetime | None) -> None:
        """Only what is committed before `clock` can be seen (None: the data's end, or
        the real clock for live data): a chain of runs moves it on between runs."""
        with self.lock:
            self.dataset.clock = None if clock is None else to_time(clock)

    def visible_at(self, clock: str | datetime, type_ids: list[int] | None = None
                   ) -> list[dict[str, Any]]:
        """Every activity (not Delete Lead) committed before `clock`, in commit order."""
        wanted = frozenset(type_ids) if type_ids else None
        with self.lock:
            return [self.dataset.activity(key) for key in self.late.visible_at(to_time(clock))
                    if (wanted is None or self.dataset.type_id(key) in wanted)
                    and self.dataset.kept(key)]

    def committed_at(self, guid: str) -> str | None:
        """When the activity with this marketoGUID was committed (its activityDate unless
        it is late); None for a GUID of no activity."""
        key = key_of(self.dataset, guid)
        return None if key is None else self.late.committed_text(key)

    # ---- faults and stats ---------------------------------------------------------

    def set_faults(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - Faults.names() - {"export_quota_bytes"}
        if unknown:
            raise TypeError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        with self.lock:
            faults = self.service.faults
            for name, value in kwargs.items():
                if name == "routes":
                    check_routes(value)
                if name == "export_quota_bytes":
                    self.service.settings.export_quota_bytes = int(value)
                elif name == "error_rate":
                    faults.error_rate = {str(k): float(v) for k, v in (value or {}).items()}
                else:
                    setattr(faults, name, value)
            if "quota_607_after" in kwargs:
                self.service.quota_607_left = kwargs["quota_607_after"]
            if "foreign_jobs" in kwargs:
                self.board.set_foreign(int(kwargs["foreign_jobs"] or 0), self.service.new_id)

    def clear_faults(self) -> None:
        with self.lock:
            self.service.faults = Faults()
            self.service.quota_607_left = None
            self.service.rest_odd = RestOdd()
            self.board.set_foreign(0, self.service.new_id)

    def set_rest_odd(self, kind: str, times: int = -1, after: int = 0,
                     route: str = "activities") -> None:
        """Get Lead Activities (route "activities") or Get Deleted Leads ("deleted_leads")
        answers oddly (odd.REST_ODD_KINDS): `times` answers (-1: every one) after `after`
        answers as usual."""
        if kind not in REST_ODD_KINDS:
            raise ValueError(f"unknown odd answer {kind!r}; known: {', '.join(REST_ODD_KINDS)}")
        if route not in ("activities", "deleted_leads"):
            raise ValueError(f"no odd answers for route {route!r}")
        with self.lock:
            odd = RestOdd(kind, times, after)
            if route == "activities":
                self.service.rest_odd = odd
            else:
                self.service.deleted_odd = odd

    def rest_odd_seen(self) -> dict[str, Any]:
        """What the odd answers did: answers served, made odd, the first odd one's number."""
        with self.lock:
            return self.service.rest_odd.seen()

    # ---- days -------------------------------------------------------------------

    def new_day(self, days: int = 1) -> None:
        """Start a new day: the daily export quota and call count reset; data, jobs and
        files stay. Every job's times move `days` days into the past (so the list
        endpoint's `finishedAt` says which day's quota a job counted against), which
        keeps the sandbox and any client that reads the real clock agreeing on "today"."""
        with self.lock:
            self.board.advance()
            self.board.age(days)
            self.service.limits.day_calls = 0
            self.service.limits.other_calls.clear()

    def spend_export_quota(self, size: int) -> None:
        """Another export of this API user (leads, say) completed now: `size` bytes of
        today's quota are gone, and the activity export list does not show it."""
        with self.lock:
            self.board.other_exports.append((datetime.now(timezone.utc), int(size)))

    def spend_calls(self, calls: int, user: str | None = None) -> None:
        """Calls made today outside the tap's run: by its own API user (None: a pipeline
        with the same user, a run whose state was lost), or by another API user."""
        with self.lock:
            self.service.limits.spend(calls, user)

    def call_count(self, route: str = "activities", admitted: bool = False) -> int:
        """Calls received at a route (a name of service.ROUTES: "activities",
        "deleted_leads", "paging_token", "create", ...); admitted=True: only those that
        passed the limits, which Marketo counts against the day."""
        check_routes([route])
        with self.lock:
            if admitted:
                return self.service.admitted_calls[route]
            return sum(self.service.calls[f"{method} {template}"]
                       for method, template, name in ROUTES if name == route)

    def dirty_guids(self) -> dict[str, str]:
        with self.lock:
            return dict(self.board.dirty_guids)

    def stats(self) -> dict[str, Any]:
        service, board, limits = self.service, self.board, self.service.limits
        with self.lock:
            board.advance()
            return {
                "calls": dict(service.calls),
                "types_calls": service.types_calls,
                "token_calls": service.token_calls,
                "jobs": [job.summary() for job in board.jobs.values() if job.owner == OURS],
                "max_processing": board.max_processing,
                "max_queued_or_processing": board.max_active,
                "refused": dict(limits.refused),
                "max_in_flight": limits.max_in_flight,
                "export_bytes_today": board.bytes_today(),
                "export_bytes_by_day": board.bytes_by_day(),
                "injected": dict(service.injected),
                "admitted_calls": dict(service.admitted_calls),
            }


def check_routes(routes: list[str]) -> None:
    known = {name for _, _, name in ROUTES}
    unknown = set(routes) - known
    if unknown:
        raise ValueError(f"unknown route(s): {', '.join(sorted(unknown))}")
