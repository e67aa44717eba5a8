"""Every bad input is the user's to fix: one ERROR line naming the file or setting and what is
wrong, exit 1, no stack trace, never "a bug of the tap". The tap runs as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tap_marketo_activities.inputs import input_files
from tap_marketo_activities.settings import REQUIRED, required_problem

GOOD = {"client_id": "id", "client_secret": "secret", "base_url": "http://127.0.0.1:9",
        "start_date": "2024-01-01T00:00:00Z"}


def tap(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")}
    return subprocess.run([sys.executable, "-m", "tap_marketo_activities", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


def the_one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "bug of the tap" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "| ERROR" in line]
    assert len(errors) == 1, done.stderr[-2000:]
    assert done.stdout == ""
    return errors[0]


FILES: dict[str, bytes | None] = {
    "missing.json": None,
    "empty.json": b"",
    "blank.json": b"  \n",
    "broken.json": b'{"client_id": ',
    "list.json": b"[1, 2]",
    "latin1.json": b'{"client_id": "caf\xe9"}',
}


@pytest.mark.parametrize("option", ["--config", "--state", "--catalog"])
@pytest.mark.parametrize(("name", "says"), [
    ("missing.json", "does not exist"),
    ("empty.json", "is empty"),
    ("blank.json", "is empty"),
    ("broken.json", "is not valid JSON: Expecting value at line 1 column 15"),
    ("list.json", "holds a JSON array, not an object"),
    ("latin1.json", "is not UTF-8 text"),
    ("folder", "is a folder"),
])
def test_a_bad_input_file_is_one_line_naming_it(tmp_path: Path, option: str, name: str,
                                                says: str) -> None:
    (tmp_path / "good.json").write_text(json.dumps(GOOD))
    (tmp_path / "folder").mkdir()
    for file, content in FILES.items():
        if content is not None:
            (tmp_path / file).write_bytes(content)
    args = [option, name] if option == "--config" else ["--config", "good.json", option, name]
    line = the_one_line(tap(tmp_path, *args))
    assert f"{option} file {name!r} {says}" in line


def test_a_bad_state_file_given_as_option_equals_path_is_named(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(json.dumps(GOOD))
    (tmp_path / "state.json").write_text("")
    line = the_one_line(tap(tmp_path, "--config=good.json", "--state=state.json"))
    assert "--state file 'state.json' is empty: it must hold a JSON object; write {} for no " \
           "state." in line


def test_no_config_at_all_says_config_and_the_required_settings(tmp_path: Path) -> None:
    line = the_one_line(tap(tmp_path, "--discover"))
    assert "--config FILE" in line and "--config ENV" in line
    assert "client_id, client_secret, base_url and start_date" in line


@pytest.mark.parametrize(("typo", "meant"), [
    ("start_dat", "start_date"), ("client_secrte", "client_secret"), ("baseurl", "base_url"),
    ("clientid", "client_id"),
])
def test_a_typo_in_a_required_setting_gets_did_you_mean(tmp_path: Path, typo: str,
                                                        meant: str) -> None:
    config = {typo if name == meant else name: value for name, value in GOOD.items()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    line = the_one_line(tap(tmp_path, "--config", "config.json", "--discover"))
    assert f"{meant} is required" in line
    assert f"{typo!r}: did you mean {meant!r}?" in line


# ---- the pure parts, as tables ------------------------------------------------------------

@pytest.mark.parametrize(("argv", "files"), [
    (["--config", "a.json", "--state", "s.json"], [("--config", "a.json"), ("--state", "s.json")]),
    (["--config=a.json", "--catalog=c.json"], [("--config", "a.json"), ("--catalog", "c.json")]),
    (["--config", "ENV", "--discover"], []),
    (["--config", "a.json", "--config", "b.json"],
     [("--config", "a.json"), ("--config", "b.json")]),
    (["--about", "--format", "json"], []),
    (["--config"], []),  # the command line's parser says a value is missing
])
def test_input_files_of_a_command_line(argv: list[str], files: list[tuple[str, str]]) -> None:
    assert list(input_files(argv)) == files


@pytest.mark.parametrize(("config", "says"), [
    ({}, "No settings given: pass --config FILE (a JSON object with client_id, client_secret, "
         "base_url and start_date) or --config ENV"),
    ({**GOOD, "start_date": ""}, "start_date is required (the tap needs client_id, "
                                 "client_secret, base_url and start_date)."),
    ({"client_id": "x"}, "client_secret, base_url and start_date are required"),
    ({"start_dat": "2024-01-01"}, "The config has 'start_dat': did you mean 'start_date'?"),
    ({"window_days": 3}, "client_id, client_secret, base_url and start_date are required"),
])
def test_required_problem(config: dict, says: str) -> None:
    problem = required_problem(config)
    assert problem is not None and says in problem


def test_required_problem_is_none_with_every_required_setting() -> None:
    assert required_problem(GOOD) is None
    assert set(REQUIRED) == set(GOOD)
