"""The README's quick start, run as written against the sandbox: the discovery block, then
the `run.sh` block twice. The first run has no state file; the second resumes from the state
the first one left and delivers only what came after it. Then its "With Meltano" blocks, in
this repository's project and in a project of the test's own.

Needs target-jsonl from .meltano/, Meltano and PostgreSQL (scripts/pipelines-setup).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MERGED, START, all_guids, as_sorted_json, delivered_merges

from tap_marketo_activities.instants import isoformat
from tap_marketo_activities.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
TARGET_BIN = ROOT / ".meltano" / "loaders" / "target-jsonl" / "venv" / "bin"
MID = "2024-02-01T00:00:00Z"  # the first run's end_date
END = "2024-03-01T00:00:00Z"  # the second run's


def readme_block(marker: str, section: tuple[str, str] = ("## Quick start",
                                                           "### With Meltano")) -> str:
    """The one ```bash block of a README section (the quick start unless told) that
    contains `marker`."""
    text = (ROOT / "README.md").read_text()
    part = text[text.index(section[0]):text.index(section[1])]
    found = [b for b in re.findall(r"```bash\n(.*?)```", part, re.S) if marker in b]
    assert len(found) == 1, f"{len(found)} blocks of {section[0]!r} contain {marker!r}"
    return found[0]


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_quick_start_with_the_live_sandbox_brings_the_last_day_then_an_increment(
        tmp_path: Path) -> None:
    command = readme_block("tap-marketo-activities-sandbox").strip()
    assert command.endswith("&") and "--port 8765" in command
    # The README's command as written, on a free port: tests run side by side.
    command = command.rstrip("&").replace("--port 8765", f"--port {free_port()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as sandbox:
        try:
            assert sandbox.stdout is not None and "http://" in sandbox.stdout.readline()
            run_quick_start_twice(tmp_path)
        finally:
            sandbox.terminate()


def run_quick_start_twice(tmp_path: Path) -> None:
    started = dt.datetime.now(dt.timezone.utc)
    discovered = shell(tmp_path, readme_block("--discover"))
    assert discovered.returncode == 0, discovered.stderr[-3000:]
    (tmp_path / "run.sh").write_text(readme_block("# run.sh"))
    first = shell(tmp_path, "bash run.sh")
    assert first.returncode == 0, first.stderr[-3000:]
    records = delivered(tmp_path / "output")
    day_ago = isoformat(started - dt.timedelta(hours=25))
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
    text = (ROOT / "README.md").read_text()
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


# ---- "With Meltano" ---------------------------------------------------------------------

MELTANO_SECTION = ("### With Meltano", "## Configuration")  # its blocks in this project:
# tests/test_pipelines.py, whose Meltano runs share this project's .meltano/run
MELTANO_BIN = ROOT / ".venv-meltano" / "bin"
MELTANO_END = "2024-01-11T00:00:00Z"  # meltano.yml's sandbox environment ends here


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
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def meltano_box() -> Iterator[Sandbox]:
    with Sandbox(job_latency=0.05, data_start=START, data_end=MELTANO_END) as sandbox:
        yield sandbox


def test_with_meltano_in_a_project_of_your_own(tmp_path: Path, meltano_box: Sandbox) -> None:
    add_tap = readme_block("--from-ref <checkout>", MELTANO_SECTION)
    add_target = readme_block("target-jsonl.yml", MELTANO_SECTION)
    # Settings from the environment instead of the interactive prompt.
    interactive = [line for line in add_target.splitlines() if "--interactive" in line]
    assert len(interactive) == 1
    script = (add_tap + add_target).replace("<checkout>", str(ROOT))
    script = script.replace(interactive[0] + "\n", "")
    env = {f"TAP_MARKETO_ACTIVITIES_{name.upper()}": str(value)
           for name, value in {**meltano_box.config, "start_date": START,
                               "end_date": MELTANO_END, "window_days": 5,
                               "poll_interval_seconds": 1}.items()}  # integer: Meltano 4.4
    env["PATH"] = os.pathsep.join([str(MELTANO_BIN), os.environ["PATH"]])
    done = meltano_shell(tmp_path, "meltano init --no-usage-stats project", tmp_path, env)
    assert done.returncode == 0, done.stderr[-4000:]
    project = tmp_path / "project"
    done = meltano_shell(project, script, tmp_path, env)
    assert done.returncode == 0, done.stderr[-4000:]
    plugins = (project / "meltano.yml").read_text()
    assert f"pip_url: {ROOT}\n" in plugins and "pip_url: target-jsonl==0.1.4" in plugins
    assert_loaded_once(project / "output", meltano_box, START, MELTANO_END)
