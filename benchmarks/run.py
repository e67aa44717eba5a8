"""Benchmarks of the tap against the bundled sandbox; see benchmarks/README.md.

    .venv/bin/python benchmarks/run.py                   # both parts, about 2-3 minutes
    .venv/bin/python benchmarks/run.py --records 1000000 # the 1M-record memory check
    .venv/bin/python benchmarks/run.py --only records --profile

Every figure is printed next to a baseline measured in the same run, as a ratio.
Not part of the test suite (pytest only collects tests/).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
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
sys.path.insert(0, str(ROOT))

from tap_marketo_activities.sandbox import Sandbox  # noqa: E402
from tap_marketo_activities.sandbox.data import BODY_POOL, Dataset  # noqa: E402

RECORD_TYPE = 1  # Visit Webpage: one activity type, one window, one file
RECORD_GOAL = 2.0  # tap per-record cost <= 2x the plain csv+json baseline
RSS_GOAL_MB = 200.0
SCHEDULE_GOAL = 1.25  # wall time <= 1.25x ceil(jobs / 2) x latency
SCHEDULE_TYPES = [1, 2, 3, 6, 7, 10, 11, 12]  # 8 activity types
DAY_START = "2024-01-01T00:00:00Z"
DOWNLOADED = re.compile(r"Export .*: downloaded (\d+) bytes, (\S+) records")
SUMMARY = re.compile(r"Sync summary")
MB = 1024 * 1024


# -- running the tap -----------------------------------------------------------------------


@dataclass
class TapResult:
    returncode: int
    wall: float  # process start to exit
    cpu: float  # user + system seconds of the tap process
    peak_rss_mb: float
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    cpu_at: dict[int, float] = field(default_factory=dict)  # line index -> tap CPU s so far

    def first(self, pattern: re.Pattern[str]) -> tuple[float, float | None] | None:
        """(seconds since start, tap CPU seconds then) of the first line matching."""
        for index, (moment, line) in enumerate(self.lines):
            if pattern.search(line):
                return moment, self.cpu_at.get(index)
        return None

    def last(self, pattern: re.Pattern[str]) -> tuple[float, float | None] | None:
        found = None
        for index, (moment, line) in enumerate(self.lines):
            if pattern.search(line):
                found = moment, self.cpu_at.get(index)
        return found

    def tail(self, n: int = 15) -> str:
        return "\n".join(line for _, line in self.lines[-n:])


class Usage:
    """Peak RSS and CPU seconds of one child process.

    Measured by /usr/bin/time when it is there: Linux carries the RSS high-water mark of
    the process that forks across exec, so wait4 on a child of this (large) benchmark
    process would report at least this process's own RSS. /usr/bin/time is small."""

    TIME = "/usr/bin/time"

    def __init__(self, workdir: Path) -> None:
        self.out = workdir / "usage.txt"
        self.usable = os.access(self.TIME, os.X_OK)

    def wrap(self, command: list[str]) -> list[str]:
        if not self.usable:
            return command
        return [self.TIME, "-f", "%M %U %S", "-o", str(self.out), *command]

    def read(self, usage: Any) -> tuple[float, float]:
        """(peak RSS MB, CPU s), from /usr/bin/time's file or else the wait4 rusage."""
        if self.usable and self.out.exists():
            last = self.out.read_text().strip().splitlines()[-1].split()
            return int(last[0]) / 1024, float(last[1]) + float(last[2])
        return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def run_tap(config: dict[str, Any], workdir: Path, wrap: list[str] | None = None) -> TapResult:
    """Run `python -m tap_marketo_activities --config c.json > /dev/null`, timestamping each
    stderr line as it arrives."""
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")}
    usage = Usage(workdir)
    command = usage.wrap([sys.executable, *(wrap or ["-m"]), "tap_marketo_activities",
                          "--config", str(path)])
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=workdir)
    lines: list[tuple[float, str]] = []
    cpu_at: dict[int, float] = {}
    tap_pid = None
    assert process.stderr is not None
    for line in process.stderr:
        lines.append((time.monotonic() - started, line.rstrip("\n")))
        if DOWNLOADED.search(line) or SUMMARY.search(line):
            tap_pid = tap_pid or python_pid(process.pid)
            cpu = cpu_seconds(tap_pid)
            if cpu is not None:
                cpu_at[len(lines) - 1] = cpu
    _, status, rusage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    rss, cpu = usage.read(rusage)
    return TapResult(process.returncode, wall, cpu, rss, lines, cpu_at)


def python_pid(pid: int) -> int:
    """The tap's own pid: `pid` itself, or its child when /usr/bin/time runs it."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pid
    return int(children[0]) if children else pid


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(argv: list[str]) -> tuple[dict[str, Any], float]:
    """A helper child process; returns its JSON answer and its peak RSS in MB."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        usage = Usage(Path(tmp))
        process = subprocess.Popen(usage.wrap([sys.executable, __file__, *argv]),
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        out = process.stdout.read()
        _, status, rusage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            raise SystemExit(f"child {argv[0]} failed ({process.returncode})")
        return json.loads(out), usage.read(rusage)[0]


def fail(result: TapResult, what: str) -> None:
    print(f"  !! {what}: the tap exited {result.returncode}. Its last log lines:")
    print("     " + result.tail().replace("\n", "\n     "))


# -- part 1: the record path ------------------------------------------------------------------


def type_share(type_id: int) -> float:
    """Fraction of sandbox rows that are of `type_id` (bodies come from a fixed pool)."""
    dataset = Dataset(7, DAY_START, "2024-01-02T00:00:00Z", 1)
    hits = sum(dataset.body(n)["activityTypeId"] == type_id for n in range(BODY_POOL))
    return hits / BODY_POOL


def baseline(path: str) -> dict[str, Any]:
    """The floor: csv reader + json.loads(attributes) + one json.dumps line per record to
    /dev/null. No SDK, no casting. Runs in its own process (see `run_child`)."""
    dumps, loads = json.dumps, json.loads
    csv.field_size_limit(sys.maxsize)
    started, cpu = time.perf_counter(), time.process_time()
    count = bad = 0
    with open(path, encoding="utf-8", newline="") as source, \
            open(os.devnull, "w", encoding="utf-8") as sink:
        reader = csv.reader(source)
        header = next(reader)
        at = header.index("attributes")
        write = sink.write
        for cells in reader:
            record = dict(zip(header, cells, strict=False))
            try:
                record["attributes"] = loads(cells[at])
            except ValueError:
                bad += 1  # a dirty row: keep the text
            write(dumps(record) + "\n")
            count += 1
    return {"records": count, "bad_json": bad, "seconds": time.perf_counter() - started,
            "cpu": time.process_time() - cpu}


def record_path(n_records: int, profile_to: Path | None) -> None:
    share = type_share(RECORD_TYPE)
    per_day = math.ceil(n_records / share * 1.02)  # one day, one window
    print(f"== Record path: >= {n_records:,} records of activity type {RECORD_TYPE} "
          f"(Visit Webpage) in one file")
    print(f"   sandbox: one day of {per_day:,} activities of all types, type {RECORD_TYPE} is "
          f"{share:.1%}; tap: activity_type_ids=[{RECORD_TYPE}], window_days=1 -> one job")
    sandbox = Sandbox(data_start=DAY_START, data_end="2024-01-02T00:00:00Z",
                      activities_per_day=per_day, job_latency=0.5,
                      export_quota_bytes=100 * 1024 * MB)
    sandbox.start()
    try:
        config = dict(sandbox.config, end_date="2024-01-02T00:00:00Z", window_days=1,
                      activity_type_ids=[RECORD_TYPE], poll_interval_seconds=0.25,
                      max_export_mb_per_day=100_000)
        with tempfile.TemporaryDirectory(prefix="bench-records-") as tmp:
            wrap = ["-m", "cProfile", "-o", str(profile_to), "-m"] if profile_to else None
            result = run_tap(config, Path(tmp), wrap)
        if result.returncode:
            fail(result, "record path")
            return
        jobs = sandbox.stats()["jobs"]
        job = sandbox.board.jobs[jobs[0]["exportId"]]  # the sandbox's copy of the file
        rows, size = jobs[0]["numberOfRecords"], jobs[0]["fileSize"]
        measured, base_rss = run_child(["--baseline", str(job.path)])
    finally:
        sandbox.stop()

    downloaded = result.first(DOWNLOADED)
    summary = result.last(SUMMARY)
    if downloaded is None or summary is None:
        print("  !! could not find the 'downloaded' or 'Sync summary' log line; "
              "only end-to-end figures follow")
        downloaded, summary = (0.0, 0.0), (result.wall, result.cpu)
    waited, parse_end = downloaded[0], summary[0]
    tap_wall = parse_end - waited
    tap_cpu = None
    if downloaded[1] is not None and summary[1] is not None:
        tap_cpu = summary[1] - downloaded[1]
    print(f"   file: {rows:,} records, {size / MB:.1f} MB "
          f"({jobs[0]['activityTypeIds']} in {len(jobs)} job)")
    if measured["records"] != rows:
        print(f"   (baseline read {measured['records']:,} rows)")
    if rows < n_records:
        print(f"   !! only {rows:,} records, fewer than the {n_records:,} asked for")
    print(f"   tap end to end:            {result.wall:7.2f} s wall, {result.cpu:7.2f} s CPU")
    print(f"     job wait + download:     {waited:7.2f} s wall (start .. 'downloaded' log line)")
    cpu_text = f", {tap_cpu:7.2f} s CPU" if tap_cpu is not None else ""
    print(f"     record path:             {tap_wall:7.2f} s wall{cpu_text} "
          f"('downloaded' .. 'Sync summary' log lines)")
    print(f"     exit after summary:      {result.wall - parse_end:7.2f} s wall")
    print(f"   baseline (csv+json, no SDK): {measured['seconds']:5.2f} s wall, "
          f"{measured['cpu']:5.2f} s CPU")
    print("                       records/s   us/record   ratio tap/baseline")
    figures = [("wall", tap_wall, measured["seconds"])]
    if tap_cpu is not None:
        figures.append(("CPU", tap_cpu, measured["cpu"]))
    for what, tap_s, base_s in figures:
        tap_us, base_us = tap_s / rows * 1e6, base_s / measured["records"] * 1e6
        ratio = tap_us / base_us
        verdict = "OK" if ratio <= RECORD_GOAL else (
            f"MISSES by {ratio / RECORD_GOAL:.2f}x, "
            f"{tap_us - RECORD_GOAL * base_us:.1f} us/record over")
        print(f"   tap      ({what:>4}) {rows / tap_s:11,.0f} {tap_us:11.1f}   {ratio:5.2f}x  "
              f"(goal <= {RECORD_GOAL:.0f}x: {verdict})")
        print(f"   baseline ({what:>4}) {measured['records'] / base_s:11,.0f} {base_us:11.1f}")
    rss_verdict = "OK" if result.peak_rss_mb < RSS_GOAL_MB else \
        f"MISSES by {result.peak_rss_mb - RSS_GOAL_MB:.0f} MB"
    print(f"   peak RSS: tap {result.peak_rss_mb:.0f} MB, baseline {base_rss:.0f} MB, ratio "
          f"{result.peak_rss_mb / base_rss:.2f}x   (goal < {RSS_GOAL_MB:.0f} MB: {rss_verdict})")
    if profile_to:
        print(f"   (tap ran under cProfile, so its times above are inflated; "
              f"profile in {profile_to})")
        print_profile(profile_to)


def print_profile(path: Path, top: int = 30) -> None:
    import pstats

    stats = pstats.Stats(str(path))
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


# -- part 2: the schedule ---------------------------------------------------------------------


def schedule(latency: float, windows: int, poll: float) -> None:
    end = f"2024-01-{1 + windows:02d}T00:00:00Z"
    print(f"== Schedule: {len(SCHEDULE_TYPES)} activity types x {windows} windows of 1 day, "
          f"sandbox job_latency={latency:g} s, 2 processing slots, poll_interval_seconds="
          f"{poll:g}")
    runs = [("default max_jobs_in_queue (4)", None), ("one job at a time (max_jobs_in_queue=1)", 1)]
    for label, in_queue in runs:
        sandbox = Sandbox(data_start=DAY_START, data_end=end, activities_per_day=200,
                          job_latency=latency, processing_slots=2, queue_limit=10)
        sandbox.start()
        try:
            config = dict(sandbox.config, end_date=end, window_days=1,
                          activity_type_ids=SCHEDULE_TYPES, poll_interval_seconds=poll)
            if in_queue is not None:
                config["max_jobs_in_queue"] = in_queue
            with tempfile.TemporaryDirectory(prefix="bench-schedule-") as tmp:
                result = run_tap(config, Path(tmp))
            stats = sandbox.stats()
            timeline = job_timeline(sandbox)
        finally:
            sandbox.stop()
        print(f"  -- {label}")
        if result.returncode:
            fail(result, label)
            continue
        jobs = stats["jobs"]
        ideal = math.ceil(len(jobs) / 2) * latency
        types_per_job = sorted({len(j["activityTypeIds"] or []) for j in jobs})
        print(f"   jobs created: {len(jobs)} (expected {windows} = windows, not "
              f"{windows * len(SCHEDULE_TYPES)} = types x windows); types per job: "
              f"{types_per_job}; all Completed: {all(j['status'] == 'Completed' for j in jobs)}")
        print(f"   Marketo side: max processing {stats['max_processing']}, max queued or "
              f"processing {stats['max_queued_or_processing']}")
        if timeline:
            print(f"   first job created .. last job finished: {timeline[-1]:.2f} s")
        ratio = result.wall / ideal
        if in_queue == 1:
            verdict = "comparison only, not held to the goal"
        elif ratio <= SCHEDULE_GOAL:
            verdict = "OK"
        else:
            verdict = (f"MISSES by {ratio / SCHEDULE_GOAL:.2f}x "
                       f"({result.wall - SCHEDULE_GOAL * ideal:.1f} s)")
        print(f"   wall time (tap process start .. exit): {result.wall:.2f} s; least possible "
              f"ceil({len(jobs)}/2) x {latency:g} s = {ideal:.2f} s; ratio {ratio:.2f}x   "
              f"(goal <= {SCHEDULE_GOAL}x: {verdict})")


def job_timeline(sandbox: Sandbox) -> list[float]:
    """Seconds from the first job's creation to the last job's finish (sandbox internals,
    best effort)."""
    try:
        jobs = [j for j in sandbox.board.jobs.values() if j.owner == "sandbox-api-user"]
        first = min(j.created_at for j in jobs)
        last = max(j.finished_at for j in jobs if j.finished_at)
        return [(last - first).total_seconds()]
    except (AttributeError, ValueError, TypeError):
        return []


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=500_000,
                        help="records of type 1 in the one export file (default 500000)")
    parser.add_argument("--only", choices=("records", "schedule"),
                        help="run only one part")
    parser.add_argument("--latency", type=float, default=2.0,
                        help="sandbox job_latency for the schedule part (default 2)")
    parser.add_argument("--windows", type=int, default=6,
                        help="windows (1 day each) in the schedule part (default 6)")
    parser.add_argument("--poll", type=float, default=0.5,
                        help="poll_interval_seconds in the schedule part (default 0.5)")
    parser.add_argument("--profile", metavar="FILE", type=Path,
                        help="run the record-path tap under cProfile, save to FILE, print "
                             "the top functions (inflates the record-path times)")
    parser.add_argument("--baseline", metavar="CSV", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        print(json.dumps(baseline(args.baseline)))
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, tap from {ROOT}")
    started = time.monotonic()
    parts: list[Callable[[], None]] = []
    if args.only in (None, "records"):
        profile = args.profile.resolve() if args.profile else None
        parts.append(lambda: record_path(args.records, profile))
    if args.only in (None, "schedule"):
        parts.append(lambda: schedule(args.latency, args.windows, args.poll))
    for part in parts:
        part()
        print()
    print(f"benchmark took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
