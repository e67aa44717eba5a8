"""The README's quick start, run as written against the sandbox: the discovery block, then
the `run.sh` block twice. The first run has no state file; the second resumes from the state
the first one left and delivers only what came after it.

Needs target-jsonl from .meltano/ (scripts/pipelines-setup installs it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import START, all_guids

from tap_marketo_activities.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
TARGET_BIN = ROOT / ".meltano" / "loaders" / "target-jsonl" / "venv" / "bin"
MID = "2024-02-01T00:00:00Z"  # the first run's end_date
END = "2024-03-01T00:00:00Z"  # the second run's


def readme_block(marker: str) -> str:
    """The one ```bash block of the README's quick start that contains `marker`."""
    text = (ROOT / "README.md").read_text()
    quick_start = text[text.index("## Quick start"):text.index("### With Meltano")]
    found = [b for b in re.findall(r"```bash\n(.*?)```", quick_start, re.S) if marker in b]
    assert len(found) == 1, f"{len(found)} quick-start blocks contain {marker!r}"
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
