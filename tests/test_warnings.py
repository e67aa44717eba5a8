"""No ResourceWarning (an unclosed file or socket) from the tap, as Meltano shows them: it
runs taps with PYTHONWARNINGS set, and the state file is what it passes with --state."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TapRun, config_for, run_tap

from tap_marketo_activities.sandbox import Sandbox

SHOW = {"PYTHONWARNINGS": "always::ResourceWarning"}  # ignored by default


def assert_no_resource_warning(run: TapRun) -> None:
    assert "ResourceWarning" not in run.stderr, run.stderr[-3000:]
    assert "unclosed" not in run.stderr, run.stderr[-3000:]


@pytest.mark.parametrize("extra", [(), ("--test",)], ids=["sync", "test"])
def test_a_run_with_state_and_catalog_leaves_no_file_open(
        tmp_path: Path, sandbox: Sandbox, catalog: dict, extra: tuple[str, ...]) -> None:
    first = run_tap(tmp_path / "first", config_for(sandbox), catalog=catalog, env=SHOW)
    assert first.returncode == 0, first.stderr[-3000:]
    assert_no_resource_warning(first)
    second = run_tap(tmp_path / "second", config_for(sandbox), state=first.last_state,
                     catalog=catalog, extra=extra, env=SHOW)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_no_resource_warning(second)


def test_a_failed_run_with_state_leaves_no_file_open(tmp_path: Path, sandbox: Sandbox,
                                                     catalog: dict) -> None:
    config = {**config_for(sandbox), "client_secret": "not-the-secret"}
    run = run_tap(tmp_path, config, state={"bookmarks": {}}, catalog=catalog, env=SHOW)
    assert run.returncode == 1
    assert_no_resource_warning(run)
