"""The README's quick start, run as written against the sandbox: the discovery block, then
the `run.sh` block twice. The first run has no state file; the second resumes from the state
the first one left and delivers only what came after it. With the sandbox's own command (as
written too) the first run brings the last day through Get Lead Activities. The `--about`
sample of docs/operations-and-troubleshooting.md. The helpers of the "With Meltano" blocks,
which tests/test_pipelines.py runs beside its other Meltano runs.

Needs target-jsonl from .meltano/ (scripts/pipelines-setup).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import MERGED, START, all_guids, as_sorted_json, delivered_merges

from tap_marketo_activities.instants import isoformat
from tap_marketo_activities.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OPERATIONS = ROOT / "docs" / "operations-and-troubleshooting.md"
TARGET_BIN = ROOT / ".meltano" / "loaders" / "target-jsonl" / "venv" / "bin"
MID = "2024-02-01T00:00:00Z"  # the first run's end_date
END = "2024-03-01T00:00:00Z"  # the second run's
QUICK_START = ("## Quick start", "## With Meltano")


def doc_blocks(section: tuple[str, str], language: str = "bash",
               doc: Path = README) -> list[str]:
    """Every ```LANGUAGE block of the part of `doc` from heading section[0] to section[1]."""
    text = "\n" + doc.read_text()  # a heading on the first line too
    start = text.index(f"\n{section[0]}")
    part = text[start:text.index(f"\n{section[1]}", start + 1)]
    return [str(block) for block in re.findall(rf"```{language}\n(.*?)```", part, re.S)]


def readme_block(marker: str, section: tuple[str, str] = QUICK_START,
                 doc: Path = README) -> str:
    """The one ```bash block of a section (the quick start unless told) that contains
    `marker`."""
    found = [b for b in doc_blocks(section, doc=doc) if marker in b]
    assert len(found) == 1, f"{len(found)} blocks of {section[0]!r} contain {marker!r}"
    return found[0]


@contextmanager
def in_background(block: str, cwd: Path, env: dict[str, str]) -> Iterator[str]:
    """Runs a block that starts the sandbox with `&`, as written, in a bash of its own that
    then waits on it; yields the sandbox's first line once it answers, and stops it after."""
    with subprocess.Popen(["bash", "-c", block + "\nwait\n"], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            assert first.startswith("sandbox listening on http://"), first
            yield first
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with Sandbox(job_latency=0.05, data_start=START, data_end=END) as sandbox:
        yield sandbox


def shell(cwd: Path, script: str) -> subprocess.CompletedProcess[str]:
    assert (TARGET_BIN / "target-jsonl").exists(), "run `bash scripts/pipelines-setup`"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(TARGET_BIN),
                                   env.get("PATH", "")])
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def write_config(cwd: Path, box: Sandbox, end: str) -> None:
    """What the user writes into config.json, for the sandbox (poll fast: it is quick)."""
    config = {**box.config, "start_date": START, "end_date": end, "poll_interval_seconds": 0.2}
    (cwd / "config.json").write_text(json.dumps(config))


def delivered(output: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(output.glob("*.jsonl"))
            for line in f.read_text().splitlines()]


def assert_loaded_once(output: Path, box: Sandbox, start: str, end: str) -> None:
    """target-jsonl's files hold every activity of [start, end) once, and merged_leads'
    file its own records: one per (Merge Leads activity, lead merged away)."""
    records: dict[str, list[dict]] = {}
    for f in sorted(output.glob("*.jsonl")):  # STREAM.jsonl, or STREAM-TIMESTAMP.jsonl
        records.setdefault(f.stem.split("-")[0], []).extend(
            json.loads(line) for line in f.read_text().splitlines())
    merges = records.pop(MERGED, [])
    guids = sorted(r["marketoGUID"] for rows in records.values() for r in rows)
    assert guids == sorted(all_guids(box, start, end))
    expected = delivered_merges(box, start, end)
    assert expected and as_sorted_json(merges) == as_sorted_json(expected)


def bookmarks(cwd: Path) -> set[str]:
    state = json.loads((cwd / "state.json").read_text())
    return {b["replication_key_value"] for b in state["bookmarks"].values()}


def test_quick_start_first_run_then_a_run_that_resumes(tmp_path: Path, box: Sandbox) -> None:
    write_config(tmp_path, box, MID)
    discovered = shell(tmp_path, readme_block("--discover"))
    assert discovered.returncode == 0, discovered.stderr[-3000:]
    (tmp_path / "run.sh").write_text(readme_block("# run.sh"))

    assert not (tmp_path / "state.json").exists()
    first = shell(tmp_path, "bash run.sh")
    assert first.returncode == 0, first.stderr[-3000:]
    records = delivered(tmp_path / "output")
    assert {r["marketoGUID"] for r in records} == all_guids(box, START, MID)
    assert bookmarks(tmp_path) == {MID}

    # A month later: the same run.sh, a later end_date. Only what came after MID arrives.
    (tmp_path / "output").rename(tmp_path / "output-first-run")
    write_config(tmp_path, box, END)
    second = shell(tmp_path, "bash run.sh")
    assert second.returncode == 0, second.stderr[-3000:]
    records = delivered(tmp_path / "output")
    guids = {r["marketoGUID"] for r in records}
    assert guids >= all_guids(box, START, END) - all_guids(box, START, MID)
    # Only rows stamped exactly on the bookmark can come again (see "How a sync runs").
    assert all(r["activityDate"] >= MID for r in records)
    assert bookmarks(tmp_path) == {END}


def test_quick_start_with_the_live_sandbox_brings_the_last_day_then_an_increment(
        tmp_path: Path) -> None:
    command = readme_block("tap-marketo-activities-sandbox")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with in_background(command, tmp_path, env):
        run_quick_start_twice(tmp_path)


def run_quick_start_twice(tmp_path: Path) -> None:
    started = dt.datetime.now(dt.timezone.utc)
    discovered = shell(tmp_path, readme_block("--discover"))
    assert discovered.returncode == 0, discovered.stderr[-3000:]
    (tmp_path / "run.sh").write_text(readme_block("# run.sh"))
    first = shell(tmp_path, "bash run.sh")
    assert first.returncode == 0, first.stderr[-3000:]
    # The sandbox's start_date is under a day back: the first run takes REST, no export job.
    assert "through Get Lead Activities" in first.stderr, first.stderr[-3000:]
    assert "Export window" not in first.stderr, first.stderr[-3000:]
    records = delivered(tmp_path / "output")
    day_ago = isoformat(started - dt.timedelta(hours=23))
    assert len(records) > 1000  # a day at one activity every 30 s, and deleted leads
    assert all(day_ago <= r["activityDate"] < isoformat(started + dt.timedelta(minutes=5))
               for r in records)
    edge = min(bookmarks(tmp_path))
    # Activities keep coming, one every 30 s: the next run has a real increment.
    time.sleep(max(0.0, 35 - (dt.datetime.now(dt.timezone.utc) -
                              dt.datetime.fromisoformat(edge.replace("Z", "+00:00"))
                              ).total_seconds()))
    (tmp_path / "output").rename(tmp_path / "output-first-run")
    second = shell(tmp_path, "bash run.sh")
    assert second.returncode == 0, second.stderr[-3000:]
    later = delivered(tmp_path / "output")
    assert later and all(r["activityDate"] >= edge for r in later)
    assert {r["marketoGUID"] for r in later}.isdisjoint({r["marketoGUID"] for r in records})
    assert min(bookmarks(tmp_path)) > edge


def test_the_about_sample_is_what_about_prints() -> None:
    text = OPERATIONS.read_text()
    sample = re.search(r"`tap-marketo-activities --about` prints.*?```\n(.*?)```", text, re.S)
    assert sample is not None
    shown = [line for line in sample.group(1).splitlines() if "…" not in line]
    printed = subprocess.run([sys.executable, "-m", "tap_marketo_activities", "--about"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    # Every line shown, in the order shown, with only the README's … lines left out.
    position = 0
    for line in shown:
        assert line in printed[position:], f"--about does not print {line!r} there"
        position = printed.index(line, position) + 1
    assert len(shown) >= 20


# ---- helpers of "With Meltano" (tests/test_pipelines.py runs those blocks) ------------

MELTANO_BIN = ROOT / ".venv-meltano" / "bin"


def meltano_shell(cwd: Path, script: str, tmp: Path,
                  env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """bash SCRIPT with nothing from the caller's TAP_/TARGET_/MELTANO_ variables, and a
    Meltano system database (so state) of the test's own."""
    assert (MELTANO_BIN / "meltano").exists(), "run `bash scripts/pipelines-setup`"
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("TAP_MARKETO", "TARGET_", "MELTANO_", "PG"))}
    clean.update({"MELTANO_DATABASE_URI": f"sqlite:///{tmp}/meltano.db",
                  "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false", **env})
    return subprocess.run(["bash", "-ec", script], cwd=cwd, env=clean, capture_output=True,
                          text=True, timeout=900)
