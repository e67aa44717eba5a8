"""Whole-process benchmarks of the tap against the bundled sandbox; see benchmarks/README.md.

    .venv/bin/python benchmarks/run.py               # every row, about 5-8 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick       # small smoke version, under a minute
    .venv/bin/python benchmarks/run.py --only two_types --runs 5

Each row runs `tap-marketo-activities --config c.json --catalog cat.json > /dev/null` as a
real subprocess against a sandbox in a process of its own (its CPU is not counted), and
compares it with a bare Python loop over the same export file(s), run in the same way.
Not part of the test suite (pytest only collects tests/).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TAP = Path(sys.executable).parent / "tap-marketo-activities"
DAY_START = "2024-01-01T00:00:00Z"
MB = 1024 * 1024
DEFAULT_RUNS = 3
NO_LIMIT_MB = 100_000  # the tap's max_export_mb_per_day when the quota is not the subject
SANDBOX_QUOTA = 1 << 40  # bytes: every run of a row exports its window again
WINDOW_LINE = re.compile(r"(?:Window|Increment) \S+ \.\. \S+: (\d+) records? for")
DOWNLOADED_LINE = re.compile(r"Export .*: downloaded (\d+) bytes")
RATE_LIMIT_LINE = re.compile(r"Rate limit reached")
CREATED_LINE = re.compile(r"Export .*: created ")

# Attribute-rich activity types of the sandbox (6-10 attributes each, ~250-310 bytes of
# attribute JSON a row); each type is ~5 % of the sandbox's activities (see `share_of`).
ONE_TYPE = [1]  # Visit Webpage
TWO_TYPES = [1, 2]  # + Fill Out Form
EIGHT_TYPES = [1, 2, 3, 8, 10, 11, 22, 104]


# -- child processes --------------------------------------------------------------------------


@dataclass
class Usage:
    """One child process, measured by os.wait4: its own CPU and peak RSS, nothing else's."""

    returncode: int
    cpu: float  # user + system seconds
    wall: float
    rss_mb: float


def run_measured(command: list[str], *, env: dict[str, str] | None = None,
                 stdout: Any = subprocess.DEVNULL, stderr: Any = None,
                 during: Callable[[], None] | None = None) -> Usage:
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=ROOT)
    if during is not None:
        during()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    # Linux reports ru_maxrss in KiB. A child's figure is at least the RSS of the process
    # that forked it, so this benchmark process stays small (the sandbox runs elsewhere).
    return Usage(process.returncode, usage.ru_utime + usage.ru_stime, wall,
                 usage.ru_maxrss / 1024)


class SandboxProcess:
    """The bundled sandbox in a process of its own (`--serve` below), so that its CPU is
    never counted as the tap's. Same server as `tap-marketo-activities-sandbox`; this
    launcher only adds the options that command has no flags for (export quota, slots)."""

    def __init__(self, workdir: Path, **options: Any) -> None:
        self.options = {"export_quota_bytes": SANDBOX_QUOTA, **options}
        self.config_path = workdir / "sandbox.json"
        self.process: subprocess.Popen[str] | None = None
        self.config: dict[str, Any] = {}

    def __enter__(self) -> SandboxProcess:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", json.dumps(self.options),
             "--config-out", str(self.config_path)], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"the sandbox did not start: {line!r}")
        self.config = json.loads(self.config_path.read_text())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


def serve(options: dict[str, Any], config_out: str) -> None:
    """The `--serve` child: run a Sandbox until SIGTERM."""
    sys.path.insert(0, str(ROOT))
    from tap_marketo_activities.sandbox import Sandbox

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    sandbox = Sandbox(**options)
    sandbox.start()
    try:
        Path(config_out).write_text(json.dumps(sandbox.config))
        print(f"sandbox listening on {sandbox.base_url}", flush=True)
        done.wait()
    finally:
        sandbox.stop()


# -- the tap ----------------------------------------------------------------------------------


@dataclass
class TapRun:
    usage: Usage
    log: str
    records: int  # from the tap's "Window ..: N records" lines

    def lines(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        return list(pattern.finditer(self.log))

    def warnings(self) -> list[str]:
        """What makes a run's wall time say little about the tap."""
        waits = len(RATE_LIMIT_LINE.findall(self.log))
        return [f"!! the tap waited for Marketo's rate limit {waits} time(s)"] if waits else []


class Tap:
    """Config and catalog for one sandbox, and a way to run the tap as users do."""

    def __init__(self, workdir: Path, sandbox: SandboxProcess, types: list[int],
                 **settings: Any) -> None:
        self.workdir = workdir
        # Bulk export unless a row says otherwise: the rows time the export file's path
        # (the increment row compares both roads).
        self.config = {**sandbox.config, "max_export_mb_per_day": NO_LIMIT_MB,
                       "rest_increments": "off", **settings}
        self.types = types
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")}
        self.runs = 0
        self.catalog = self.discover()

    def write_config(self, extra: dict[str, Any]) -> Path:
        path = self.workdir / f"config-{self.runs}.json"
        path.write_text(json.dumps({**self.config, **extra}))
        return path

    def discover(self) -> Path:
        config = self.write_config({})
        out = subprocess.run([str(TAP), "--config", str(config), "--discover"], env=self.env,
                             capture_output=True, text=True, check=False)
        if out.returncode:
            raise SystemExit(f"--discover failed:\n{out.stderr[-2000:]}")
        catalog = json.loads(out.stdout)
        wanted = 0
        for stream in catalog["streams"]:
            chosen = stream_type(stream) in self.types
            wanted += chosen
            for entry in stream["metadata"]:
                if not entry["breadcrumb"]:
                    entry["metadata"]["selected"] = chosen
        if wanted != len(self.types):
            raise SystemExit(f"found {wanted} of the streams of types {self.types}")
        path = self.workdir / "catalog.json"
        path.write_text(json.dumps(catalog))
        return path

    def selected_streams(self) -> list[str]:
        catalog = json.loads(self.catalog.read_text())
        return [s["tap_stream_id"] for s in catalog["streams"]
                if any(not e["breadcrumb"] and e["metadata"].get("selected")
                       for e in s["metadata"])]

    def run(self, extra: dict[str, Any] | None = None, state: dict[str, Any] | None = None,
            env: dict[str, str] | None = None, stdout: Any = subprocess.DEVNULL,
            during: Callable[[], None] | None = None, prefix: list[str] | None = None) -> TapRun:
        self.runs += 1
        command = [*(prefix or []), str(TAP), "--config", str(self.write_config(extra or {})),
                   "--catalog", str(self.catalog)]
        if state is not None:
            state_path = self.workdir / f"state-{self.runs}.json"
            state_path.write_text(json.dumps(state))
            command += ["--state", str(state_path)]
        log_path = self.workdir / f"tap-{self.runs}.log"
        with log_path.open("w") as log:
            usage = run_measured(command, env=env or self.env, stdout=stdout, stderr=log,
                                 during=during)
        text = log_path.read_text(errors="replace")
        if usage.returncode:
            tail = "\n     ".join(text.strip().splitlines()[-12:])
            raise SystemExit(f"the tap exited {usage.returncode}; its last lines:\n     {tail}")
        records = sum(int(m.group(1)) for m in WINDOW_LINE.finditer(text))
        return TapRun(usage, text, records)


def stream_type(stream: dict[str, Any]) -> int | None:
    """An activity stream's type id, from the catalog (its schema's activityTypeId enum or
    the stream name's suffix, whichever the tap gives)."""
    prop = stream["schema"].get("properties", {}).get("activityTypeId", {})
    for key in ("const", "enum"):
        value = prop.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, list) and len(value) == 1:
            return int(value[0])
    for entry in stream["metadata"]:
        value = entry["metadata"].get("marketo-activity-type-id")
        if value is not None:
            return int(value)
    return None


# -- the baseline -----------------------------------------------------------------------------


def baseline(paths: list[str]) -> None:
    """The floor (the `--baseline` child): csv.reader + json.loads(attributes) + one
    json.dumps line per record written to stdout. No SDK, no casting."""
    import csv

    dumps, loads = json.dumps, json.loads
    csv.field_size_limit(sys.maxsize)
    write = sys.stdout.write
    count = 0
    for path in paths:
        with open(path, encoding="utf-8", newline="") as source:
            reader = csv.reader(source)
            header = next(reader)
            at = header.index("attributes")
            for cells in reader:
                record = dict(zip(header, cells, strict=False))
                try:  # noqa: SIM105 (contextlib.suppress costs more per row)
                    record["attributes"] = loads(cells[at])
                except ValueError:
                    pass  # a dirty row keeps its text
                write(dumps(record) + "\n")
                count += 1
    sys.stdout.flush()
    print(f"baseline records {count}", file=sys.stderr)


def run_baseline(files: list[Path], workdir: Path) -> tuple[Usage, int]:
    log_path = workdir / "baseline.log"
    with log_path.open("w") as log:
        usage = run_measured([sys.executable, __file__, "--baseline", *map(str, files)],
                             stderr=log)
    text = log_path.read_text()
    if usage.returncode:
        raise SystemExit(f"the baseline failed:\n{text[-2000:]}")
    return usage, int(text.rsplit(" ", 1)[1])


# -- rows -------------------------------------------------------------------------------------


@dataclass
class Row:
    shape: str
    records: int = 0
    tap_us: float = math.nan
    base_us: float = math.nan
    wall: float = math.nan
    base_wall: float = math.nan
    rss_mb: float = math.nan
    base_rss_mb: float = math.nan
    goal: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.tap_us / self.base_us


@dataclass(frozen=True)
class Shape:
    name: str
    title: str
    types: list[int]
    records: int
    quick_records: int
    ratio_goal: float | None = None


SHAPES = [
    Shape("one_type", "one type, one file", ONE_TYPE, 100_000, 10_000),
    Shape("two_types", "two types, one shared job", TWO_TYPES, 100_000, 10_000, 1.4),
    Shape("eight_types", "eight types, one shared job", EIGHT_TYPES, 100_000, 10_000),
    Shape("one_type_1m", "one type, 1M records, one file", ONE_TYPE, 1_000_000, 50_000,
          1.15),
]
RSS_GOAL_MB = 200.0


def share_of(types: list[int]) -> float:
    """Fraction of the sandbox's activities that are of these types, worked out in a child
    (the `--share` option) so that this process stays small."""
    out = subprocess.run([sys.executable, __file__, "--share", *map(str, types)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout)


def print_share(types: list[int]) -> None:
    sys.path.insert(0, str(ROOT))
    from tap_marketo_activities.sandbox.data import BODY_POOL, Dataset

    dataset = Dataset(7, DAY_START, "2024-01-02T00:00:00Z", 1)
    wanted = set(types)
    hits = sum(dataset.body(n)["activityTypeId"] in wanted for n in range(BODY_POOL))
    print(hits / BODY_POOL)


def record_row(shape: Shape, records: int, runs: int, workdir: Path,
               profile: int = 0) -> Row:
    """One day, one window, one job serving `shape.types`; the tap against the baseline."""
    per_day = math.ceil(records / share_of(shape.types))
    end = "2024-01-02T00:00:00Z"
    row = Row(f"{shape.name}: {shape.title}")
    with SandboxProcess(workdir, data_start=DAY_START, data_end=end,
                        activities_per_day=per_day, job_latency=0.05) as sandbox:
        tap = Tap(workdir, sandbox, shape.types, end_date=end, window_days=1,
                  poll_interval_seconds=0.2)
        raw = workdir / "raw"
        warm = tap.run({"raw_files_dir": str(raw)})  # also fills the page cache
        files = sorted(raw.glob("*.csv"))
        sidecars = [json.loads(p.with_suffix(".json").read_text()) for p in files]
        in_files = sum(s["numberOfRecords"] for s in sidecars)
        jobs = len(warm.lines(CREATED_LINE))
        size = sum(p.stat().st_size for p in files)
        row.notes.append(f"{jobs} job(s), {len(files)} file(s), {size / MB:.1f} MB, "
                         f"{in_files:,} rows of types {shape.types}")
        taps, bases = [], []
        for _ in range(runs):
            base, base_records = run_baseline(files, workdir)
            bases.append(base)
            measured = tap.run()
            taps.append(measured.usage)
            if measured.records != in_files or base_records != in_files:
                row.notes.append(f"!! records differ: tap {measured.records:,}, baseline "
                                 f"{base_records:,}, files {in_files:,}")
        if profile:
            print_profile(tap, workdir / "tap.prof", profile)
    best, best_base = min(taps, key=lambda u: u.cpu), min(bases, key=lambda u: u.cpu)
    row.records = in_files
    row.tap_us, row.base_us = best.cpu / in_files * 1e6, best_base.cpu / in_files * 1e6
    row.wall, row.base_wall = min(u.wall for u in taps), min(u.wall for u in bases)
    row.rss_mb, row.base_rss_mb = max(u.rss_mb for u in taps), max(u.rss_mb for u in bases)
    row.notes.append("tap CPU s per run: " + ", ".join(f"{u.cpu:.2f}" for u in taps)
                     + "; baseline: " + ", ".join(f"{u.cpu:.2f}" for u in bases))
    verdicts = []
    if shape.ratio_goal:
        verdicts.append(("OK" if row.ratio <= shape.ratio_goal else "MISSES")
                        + f" ratio <= {shape.ratio_goal}")
    if shape.name == "one_type_1m":
        verdicts.append(("OK" if row.rss_mb <= RSS_GOAL_MB else "MISSES")
                        + f" RSS <= {RSS_GOAL_MB:.0f} MB")
    row.goal = "; ".join(verdicts)
    return row


def print_profile(tap: Tap, path: Path, top: int) -> None:
    """One more run under cProfile (not counted in the row), its top functions by
    cumulative time."""
    import pstats

    tap.run(prefix=[sys.executable, "-m", "cProfile", "-o", str(path)])
    print(f"== cProfile of one run (wall-clock timer: waits for the job count; times "
          f"inflated by the profiler), top {top} by cumtime, then by tottime")
    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


# -- temp disk --------------------------------------------------------------------------------


class DiskSampler:
    """Peak total size of the tap's temp folders under `parent`, sampled every 50 ms."""

    def __init__(self, parent: Path) -> None:
        self.parent = parent
        self.peak = 0
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.size())
            self.samples += 1

    def size(self) -> int:
        total = 0
        for folder in self.parent.glob("tap-marketo-activities-*"):
            for root, _, names in os.walk(folder):
                for name in names:
                    with contextlib.suppress(OSError):  # removed meanwhile
                        total += os.stat(os.path.join(root, name)).st_size
        return total


def disk_row(quick: bool, workdir: Path) -> Row:
    windows, width, in_queue = (6, 2, 4) if quick else (12, 7, 4)
    days = windows * width
    per_day = 1_500 if quick else 6_000
    end = iso_after(DAY_START, days)
    row = Row(f"disk: {len(EIGHT_TYPES)} types x {windows} windows of {width} days, "
              f"max_jobs_in_queue {in_queue}")
    tmp = workdir / "tmp"
    tmp.mkdir()
    with SandboxProcess(workdir, data_start=DAY_START, data_end=end,
                        activities_per_day=per_day, job_latency=0.05) as sandbox:
        tap = Tap(workdir, sandbox, EIGHT_TYPES, end_date=end, window_days=width,
                  poll_interval_seconds=0.2, max_jobs_in_queue=in_queue)
        sampler = DiskSampler(tmp)

        def sample() -> None:
            sampler.thread.start()

        run = tap.run(env={**tap.env, "TMPDIR": str(tmp)}, during=sample)
        sampler.stop.set()
        sampler.thread.join()
    sizes = [int(m.group(1)) for m in run.lines(DOWNLOADED_LINE)]
    row.records = run.records
    row.wall, row.rss_mb = run.usage.wall, run.usage.rss_mb
    row.tap_us = run.usage.cpu / max(1, run.records) * 1e6
    largest, total = max(sizes, default=0), sum(sizes)
    bound = in_queue * largest
    row.notes.append(f"{len(sizes)} export files (the first a one-day probe), largest "
                     f"{largest / MB:.2f} MB, all {total / MB:.2f} MB; {sampler.samples} samples")
    row.notes.append(f"peak temp disk {sampler.peak / MB:.2f} MB = {sampler.peak / largest:.2f}"
                     f"x the largest file, {sampler.peak / total:.2f}x all exports"
                     if largest else "no export downloaded")
    row.notes += run.warnings()
    row.goal = ("OK" if sampler.peak <= bound else "MISSES") + \
        f" peak <= {in_queue} x largest ({bound / MB:.2f} MB)"
    return row


def iso_after(start: str, days: int) -> str:
    import datetime as dt

    moment = dt.datetime.fromisoformat(start.replace("Z", "+00:00")) + dt.timedelta(days=days)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the job schedule -------------------------------------------------------------------------


def schedule_rows(quick: bool, workdir: Path) -> list[Row]:
    """Backfill of 8 types x N one-day windows, job latency L, 2 processing slots: wall time
    against the least possible ceil(N / 2) x L."""
    windows, latency = (4, 1.0) if quick else (6, 2.0)
    end = iso_after(DAY_START, windows)
    ideal = math.ceil(windows / 2) * latency
    rows = []
    # Each run has a sandbox of its own: one run's API calls must not use up the next one's
    # 100 calls per 20 s. The first run, with no state, teaches the sizes the others get.
    runs = [("default (4), no state: one-day probe first", {}, False),
            ("default (4), sizes seeded: no probe", {}, True),
            ("max_jobs_in_queue 1, sizes seeded", {"max_jobs_in_queue": 1}, True)]
    seeded: dict[str, Any] = {}
    for number, (label, extra, seed) in enumerate(runs):
        folder = workdir / f"schedule-{number}"
        folder.mkdir()
        out = folder / "stdout.jsonl"
        with SandboxProcess(folder, data_start=DAY_START, data_end=end,
                            activities_per_day=400, job_latency=latency,
                            processing_slots=2) as sandbox:
            tap = Tap(folder, sandbox, EIGHT_TYPES, end_date=end, window_days=1,
                      poll_interval_seconds=0.25)
            with out.open("wb") as stdout:
                run = tap.run(extra, state={"marketo_export_sizes": seeded} if seed else None,
                              stdout=stdout)
        if not seed:
            seeded = learnt_sizes(out)
        jobs = len(run.lines(CREATED_LINE))
        # the probe window runs alone, the other windows two at a time after it
        least = ideal if seed else latency + math.ceil((windows - 1) / 2) * latency
        row = Row(f"schedule: {label}")
        row.records, row.wall, row.rss_mb = run.records, run.usage.wall, run.usage.rss_mb
        row.notes.append(f"{jobs} jobs for {windows} windows x {len(EIGHT_TYPES)} types; "
                         f"least possible ceil({windows}/2) x {latency:g} s = {ideal:.1f} s"
                         + ("" if seed else f"; with the probe alone first {least:.1f} s")
                         + f"; wall / least {run.usage.wall / least:.2f}x")
        row.notes += run.warnings()
        rows.append(row)
    return rows


def learnt_sizes(out: Path) -> dict[str, Any]:
    """The marketo_export_sizes of the last STATE message in a run's output."""
    sizes: dict[str, Any] = {}
    with out.open() as lines:
        for line in lines:
            if '"STATE"' in line:
                sizes = json.loads(line)["value"].get("marketo_export_sizes", sizes)
    if not sizes:
        raise SystemExit("the tap wrote no marketo_export_sizes in its state")
    return sizes


# -- a fresh increment: Get Lead Activities against an export job ------------------------------

TWELVE_TYPES = [1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 22, 104]  # two REST groups of types
INCREMENT_LINE = re.compile(r"through Get Lead Activities in (\d+) calls?")


def increment_rows(quick: bool, workdir: Path) -> list[Row]:
    """A 2-hour increment of 12 types on an instance of 20,000 activities a day, from the
    same bookmarks: read through Get Lead Activities (default settings) and through one
    export job (`rest_increments: off`) whose latency is 60 s (a real one takes 20-70
    minutes), each in a sandbox of its own. Wall time REST vs bulk, and the calls used
    against the floor: the activities walked / 300 per group of types."""
    latency = 10.0 if quick else 60.0
    start, end = "2024-01-03T00:00:00Z", "2024-01-03T02:00:00Z"
    options = {"data_start": DAY_START, "data_end": "2024-01-04T00:00:00Z",
               "activities_per_day": 20_000, "job_latency": latency}
    walls: dict[str, TapRun] = {}
    for road in ("auto", "off"):
        folder = workdir / road
        folder.mkdir()
        with SandboxProcess(folder, **options) as sandbox:
            tap = Tap(folder, sandbox, TWELVE_TYPES, start_date=DAY_START, end_date=end,
                      poll_interval_seconds=1, rest_increments=road)
            state = {"bookmarks": {name: {"replication_key": "activityDate",
                                          "replication_key_value": start}
                                   for name in tap.selected_streams()}}
            walls[road] = tap.run(state=state)
    walked = int(subprocess.run([sys.executable, __file__, "--walked", json.dumps(options),
                                 start, end], capture_output=True, text=True,
                                check=True).stdout)
    groups = math.ceil(len(TWELVE_TYPES) / 10)
    floor = groups * math.ceil(walked / 300)
    calls = sum(int(m.group(1)) for m in walls["auto"].lines(INCREMENT_LINE))
    rest, bulk = walls["auto"].usage.wall, walls["off"].usage.wall
    row = Row(f"increment: 2 h of {len(TWELVE_TYPES)} types, REST vs one {latency:g} s job")
    row.records = walls["auto"].records
    row.wall, row.base_wall, row.rss_mb = rest, bulk, walls["auto"].usage.rss_mb
    row.notes.append(f"wall: REST {rest:.2f} s, bulk {bulk:.2f} s ({rest / bulk:.2f}x); "
                     f"{calls} Get Lead Activities calls for {walked:,} activities walked "
                     f"({groups} groups of types): floor {floor}, "
                     f"{calls / floor:.2f}x the floor (paging tokens included)")
    row.notes += walls["auto"].warnings()
    return [row]


# -- the lookback: what reading the last lookback_hours again costs -------------------------------

LOOKBACK_LINE = re.compile(r"Lookback: .*?; (.*?)\. The memory of what was delivered holds "
                           r"([\d,]+) activit")
DOWNLOADED = re.compile(r"([\d.]+) MB downloaded")


def last_state(out: Path) -> dict[str, Any]:
    state: dict[str, Any] = {}
    with out.open() as lines:
        for line in lines:
            if '"STATE"' in line:
                state = json.loads(line)["value"]
    return state


def lookback_rows(quick: bool, workdir: Path) -> list[Row]:
    """A 2-hour increment of 12 types (20,000 activities a day) from the state an earlier
    run with the default lookback_hours (4) left, against the same increment from that
    state without the lookback (lookback_hours 0, no `settled`): through Get Lead Activities
    (calls) and through one export job (MB). Each line compares what was spent with what
    the run's `Lookback:` line said it would cost."""
    start, end = "2024-01-03T00:00:00Z", "2024-01-03T02:00:00Z"
    options = {"data_start": DAY_START, "data_end": "2024-01-04T00:00:00Z",
               "activities_per_day": 20_000, "job_latency": 2.0 if quick else 5.0}
    rows = []
    for road in ("auto", "off"):
        folder = workdir / road
        folder.mkdir()
        with SandboxProcess(folder, **options) as sandbox:
            tap = Tap(folder, sandbox, TWELVE_TYPES, start_date=DAY_START,
                      poll_interval_seconds=1, rest_increments=road, lookback_hours=4)
            earlier = {"bookmarks": {name: {"replication_key": "activityDate",
                                            "replication_key_value": "2024-01-02T18:00:00Z"}
                                     for name in tap.selected_streams()}}
            out = folder / "earlier.out"
            with out.open("w") as sink:
                tap.run({"end_date": start}, earlier, stdout=sink)
            state = last_state(out)
            without = json.loads(json.dumps(state))
            without.pop("marketo_delivered", None)
            for mark in without["bookmarks"].values():
                mark.pop("settled", None)
            base = tap.run({"end_date": end, "lookback_hours": 0}, without)
            run = tap.run({"end_date": end}, state)
        rows.append(lookback_row(road, run, base))
    return rows


def lookback_row(road: str, run: TapRun, base: TapRun) -> Row:
    said = run.lines(LOOKBACK_LINE)
    label = "REST" if road == "auto" else "bulk"
    row = Row(f"lookback: 2 h increment, 4 h lookback vs none ({label})")
    row.records = run.records
    row.wall, row.base_wall, row.rss_mb = run.usage.wall, base.usage.wall, run.usage.rss_mb
    if road == "auto":
        calls = sum(int(m.group(1)) for m in run.lines(INCREMENT_LINE))
        base_calls = sum(int(m.group(1)) for m in base.lines(INCREMENT_LINE))
        spent = f"{calls} calls against {base_calls}: {calls - base_calls} more"
    else:
        size = float(run.lines(DOWNLOADED)[-1].group(1))
        base_size = float(base.lines(DOWNLOADED)[-1].group(1))
        spent = f"{size:.2f} MB exported against {base_size:.2f} MB: {size - base_size:.2f} MB more"
    row.notes.append(f"{spent}; the Lookback line said: "
                     f"{said[0].group(1) if said else '(no line)'}; memory "
                     f"{said[0].group(2) if said else '?'} activities")
    row.notes += run.warnings()
    return row


def print_walked(options: dict[str, Any], start: str, end: str) -> None:
    """The `--walked` child: how many activities Get Lead Activities walks in [start, end)."""
    sys.path.insert(0, str(ROOT))
    from tap_marketo_activities.sandbox import Sandbox

    print(len(Sandbox(**options).expected_rest(start, end)))


# -- the table --------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    head = (f"{'shape':<58} {'records':>9} {'tap us/rec':>10} {'base us/rec':>11} "
            f"{'ratio':>6} {'wall s':>7} {'base wall':>9} {'RSS MB':>7} {'base RSS':>8}")
    print(head)
    print("-" * len(head))
    for row in rows:
        print(f"{row.shape:<58} {row.records:>9,} {fmt(row.tap_us, 1):>10} "
              f"{fmt(row.base_us, 1):>11} {fmt(row.ratio, 2):>6} {fmt(row.wall, 2):>7} "
              f"{fmt(row.base_wall, 2):>9} {fmt(row.rss_mb, 0):>7} {fmt(row.base_rss_mb, 0):>8}")
        for note in [*row.notes, *([row.goal] if row.goal else [])]:
            print(f"    {note}")


def print_slope(rows: list[Row]) -> None:
    """From the 100k and the 1M one-type rows: the cost of one more record and the fixed
    cost of a run (start-up, the job, the download), tap and baseline."""
    by_name = {row.shape.split(":")[0]: row for row in rows}
    small, big = by_name.get("one_type"), by_name.get("one_type_1m")
    if small is None or big is None or big.records <= small.records:
        return
    lines = []
    for who, small_us, big_us in (("tap", small.tap_us, big.tap_us),
                                  ("baseline", small.base_us, big.base_us)):
        small_cpu, big_cpu = small_us * small.records / 1e6, big_us * big.records / 1e6
        slope = (big_cpu - small_cpu) / (big.records - small.records)
        lines.append((who, slope * 1e6, small_cpu - slope * small.records))
    (_, tap_slope, tap_fixed), (_, base_slope, base_fixed) = lines
    print(f"\none type, {small.records:,} vs {big.records:,} records: each more record costs "
          f"the tap {tap_slope:.1f} us CPU, the baseline {base_slope:.1f} us (ratio "
          f"{tap_slope / base_slope:.2f}); fixed CPU of a run: tap {tap_fixed:.2f} s, "
          f"baseline {base_fixed:.2f} s")


def fmt(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def main() -> None:
    names = [s.name for s in SHAPES] + ["disk", "schedule", "increment", "lookback"]
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=names, metavar="NAME",
                        help=f"run only this row (repeatable): {', '.join(names)}")
    parser.add_argument("--quick", action="store_true",
                        help="small smoke version of every row (under a minute)")
    parser.add_argument("--runs", type=int, default=None,
                        help=f"runs per CPU row, the minimum is kept (default {DEFAULT_RUNS}, "
                             "--quick 1)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after a CPU row's runs, run its tap once more under cProfile "
                             "and print the top N functions by cumulative time")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--config-out", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--share", nargs="+", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--walked", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not helper_call(args):
        bench(args, names)


def helper_call(args: argparse.Namespace) -> bool:
    """The script calls itself for a part of a row: do that part; False: a bench run."""
    if args.walked:
        print_walked(json.loads(args.walked[0]), args.walked[1], args.walked[2])
    elif args.share:
        print_share(args.share)
    elif args.serve:
        serve(json.loads(args.serve), args.config_out)
    elif args.baseline:
        baseline(args.baseline)
    else:
        return False
    return True


def bench(args: argparse.Namespace, names: list[str]) -> None:
    if not TAP.exists():
        raise SystemExit(f"{TAP} not found: run this with the venv's python "
                         "(.venv/bin/python benchmarks/run.py)")
    runs = args.runs or (1 if args.quick else DEFAULT_RUNS)
    wanted = args.only or names
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, tap {TAP}, "
          f"{runs} run(s) per CPU row{', quick' if args.quick else ''}")
    started = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for shape in SHAPES:
            if shape.name in wanted:
                records = shape.quick_records if args.quick else shape.records
                rows.append(record_row(shape, records, runs, make_dir(tmp, shape.name),
                                       args.profile))
                print(f"  .. {shape.name} done ({time.monotonic() - started:.0f} s)",
                      flush=True)
        if "disk" in wanted:
            rows.append(disk_row(args.quick, make_dir(tmp, "disk")))
            print(f"  .. disk done ({time.monotonic() - started:.0f} s)", flush=True)
        for name, rows_of in (("schedule", schedule_rows), ("increment", increment_rows),
                              ("lookback", lookback_rows)):
            if name in wanted:
                rows += rows_of(args.quick, make_dir(tmp, name))
    if args.quick:  # figures of small runs mean little: no OK or MISSES for them
        for row in rows:
            row.goal = ""
    print()
    print_table(rows)
    if args.quick:
        print("\n--quick: no verdict against the goals; run without --quick for one")
    print_slope(rows)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nbenchmark took {time.monotonic() - started:.0f} s; this process peaked at "
          f"{own:.0f} MB RSS (a child's peak RSS is never below its parent's at fork)")


def make_dir(parent: str, name: str) -> Path:
    path = Path(parent) / name
    path.mkdir()
    return path


if __name__ == "__main__":
    main()
