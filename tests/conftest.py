"""Fixtures: the bundled Marketo sandbox on loopback, and the tap run as users run it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tap_marketo_activities.sandbox import Sandbox

START = "2024-01-01T00:00:00Z"
END = "2024-03-01T00:00:00Z"
MERGED = "merged_leads"  # one record per lead merged away: its key is not marketoGUID alone
# lookback_hours 0: these tests count jobs, windows and calls of one read per range; the
# lookback's own tests (tests/test_lookback.py) and the README's runs use the default.
FAST = {"poll_interval_seconds": 0.2, "window_days": 20, "max_retry_seconds": 20,
        "lookback_hours": 0}


@dataclass
class TapRun:
    """What one `tap-marketo-activities` process wrote."""

    returncode: int
    messages: list[dict[str, Any]]
    stderr: str
    records: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        for message in self.messages:
            if message.get("type") == "RECORD":
                self.records[message["stream"]].append(message["record"])

    @property
    def states(self) -> list[dict[str, Any]]:
        return [m["value"] for m in self.messages if m.get("type") == "STATE"]

    @property
    def last_state(self) -> dict[str, Any]:
        return self.states[-1]

    def guids(self) -> Counter[str]:
        """The activities delivered (merged_leads repeats its Merge Leads activity's)."""
        return Counter(r["marketoGUID"] for stream, rows in self.records.items()
                       if stream != MERGED for r in rows)


def parse_output(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def tap_command(tmp: Path, config: dict[str, Any], state: dict | None = None,
                catalog: dict | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "tap_marketo_activities", "--config",
               str(tmp / "config.json"), *extra]
    if state is not None:
        (tmp / "state.json").write_text(json.dumps(state))
        command += ["--state", str(tmp / "state.json")]
    if catalog is not None:
        (tmp / "catalog.json").write_text(json.dumps(catalog))
        command += ["--catalog", str(tmp / "catalog.json")]
    return command


def run_tap(tmp: Path, config: dict[str, Any], state: dict | None = None,
            catalog: dict | None = None, extra: tuple[str, ...] = (),
            timeout: float = 180, env: dict[str, str] | None = None) -> TapRun:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")},
           **(env or {})}
    done = subprocess.run(tap_command(tmp, config, state, catalog, extra), capture_output=True,
                          text=True, timeout=timeout, env=env)
    if "--discover" in extra:
        return TapRun(done.returncode, [json.loads(done.stdout)] if done.stdout else [],
                      done.stderr)
    return TapRun(done.returncode, parse_output(done.stdout), done.stderr)


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """One quiet sandbox for the tests that do not switch faults on."""
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        yield box


@pytest.fixture(scope="session")
def catalog(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The catalog discovery writes for the sandbox."""
    run = run_tap(tmp_path_factory.mktemp("discover"), config_for(sandbox),
                  extra=("--discover",))
    assert run.returncode == 0, run.stderr
    return run.messages[0]


@pytest.fixture
def fresh_sandbox() -> Iterator[Sandbox]:
    """A sandbox of the test's own, for faults, limits and counting calls."""
    with Sandbox(job_latency=0.2, data_start=START, data_end=END) as box:
        yield box


def delivered_rows(box: Sandbox, start: str, end: str, type_ids: list[int] | None = None,
                   **filters: Any) -> list[dict[str, Any]]:
    """What the tap delivers of the window [start, end): a job's rows of that createdAt
    window, less those stamped exactly at `end` (the next window's, of this run or the
    next)."""
    return [a for a in box.expected(start, end, type_ids, **filters)
            if a["activityDate"] < end]


def delivered_merges(box: Sandbox, start: str, end: str) -> list[dict[str, Any]]:
    """What merged_leads delivers of the window [start, end): one record per (Merge Leads
    activity, lead merged away), less those stamped exactly at `end` (as delivered_rows)."""
    return [p for p in box.expected_merged_leads(start, end) if p["activityDate"] < end]


def as_sorted_json(records: list[dict[str, Any]]) -> list[str]:
    """Records as text in one order: two lists are equal when they hold the same records,
    each as often."""
    return sorted(json.dumps(r, sort_keys=True) for r in records)


def all_guids(box: Sandbox, start: str = START, end: str = END) -> set[str]:
    """Every activity a full sync of [start, end) delivers: the bulk exports' and the
    deleted leads' (stream activities_delete_lead)."""
    bulk = {a["marketoGUID"] for a in delivered_rows(box, start, end)}
    deleted = {d["marketoGUID"] for d in box.expected_deleted_leads(start)
               if d["activityDate"] < end}
    return bulk | deleted


def config_for(box: Sandbox, **overrides: Any) -> dict[str, Any]:
    return {**box.config, "end_date": END, **FAST, **overrides}


# ---- what the fault tests assert ----------------------------------------------------

TOKEN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:ab")
RUNNING = ("Created", "Queued", "Processing")


def assert_nothing_left_running(box: Sandbox) -> None:
    assert [j["exportId"] for j in box.stats()["jobs"] if j["status"] in RUNNING] == []


def assert_complete(run: TapRun, box: Sandbox) -> None:
    assert run.returncode == 0, run.stderr[-3000:]
    assert set(run.guids()) == all_guids(box)
    assert [g for g, n in run.guids().items() if n > 1] == []
    assert_nothing_left_running(box)


def assert_no_secrets(run: TapRun, box: Sandbox) -> None:
    secret = box.config["client_secret"]
    text = run.stderr + "\n".join(map(str, run.messages))
    assert secret not in text
    assert not TOKEN.search(text)


def assert_clean_stop(run: TapRun, box: Sandbox, words: str) -> None:
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if "| ERROR" in line]
    assert any(words in line for line in errors), run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert_nothing_left_running(box)


def assert_quota_day_stop(run: TapRun, box: Sandbox, words: str) -> None:
    """Stopped by a day's export quota after delivering some windows: exit 0 for the
    scheduler, one WARNING that says why, what is left and when the quota resets."""
    assert run.returncode == 0, run.stderr[-3000:]
    warnings = [line for line in run.stderr.splitlines() if "| WARNING" in line
                and words in line and "resets at" in line and "left to export" in line]
    assert len(warnings) == 1, run.stderr[-3000:]
    assert [line for line in run.stderr.splitlines() if "| ERROR" in line] == []
    assert "Traceback" not in run.stderr
    assert_nothing_left_running(box)


def finish_after(first: TapRun, box: Sandbox, tmp_path: Path, **config: Any) -> None:
    """The run after a clean stop delivers the rest: nothing lost."""
    box.clear_faults()
    second = run_tap(tmp_path / "after", config_for(box, **config), state=first.last_state)
    assert second.returncode == 0, second.stderr[-3000:]
    assert set(first.guids() + second.guids()) == all_guids(box)
