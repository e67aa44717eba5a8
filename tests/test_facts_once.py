"""Each fact in one place: the sandbox shares no code with the tap, the export columns and
the settings' defaults, ranges and choices are declared once and read from there."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tap_marketo_activities.records import Columns
from tap_marketo_activities.schema import BASE_COLUMNS, EXPORT_COLUMNS, base_properties
from tap_marketo_activities.settings import CONFIG_SCHEMA, SettingsError, parse_settings

SANDBOX = Path(__file__).parent.parent / "tap_marketo_activities" / "sandbox"
GOOD = {"client_id": "a", "client_secret": "b", "base_url": "http://127.0.0.1:1",
        "start_date": "2024-01-01"}
PROPERTIES = CONFIG_SCHEMA["properties"]
# Settings field <- the setting it is read from, for the numbers.
NUMBERS = {"window_days": "window_days", "poll_interval": "poll_interval_seconds",
           "job_timeout": "job_timeout_seconds", "max_jobs_in_queue": "max_jobs_in_queue",
           "api_limit_share": "api_limit_share", "request_timeout": "request_timeout_seconds",
           "max_retry_seconds": "max_retry_seconds", "max_job_attempts": "max_job_attempts",
           "heartbeat_seconds": "heartbeat_seconds",
           "max_rest_calls_per_day": "max_rest_calls_per_day"}


def imports(path: Path) -> list[tuple[str, int]]:
    """(module, relative level) of every import in a file."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


def test_the_sandbox_imports_the_standard_library_and_itself_only() -> None:
    files = sorted(SANDBOX.glob("*.py"))
    assert len(files) > 5
    for path in files:
        for module, level in imports(path):
            where = f"{path.name} imports {'.' * level}{module}"
            assert level <= 1, where  # `from .. import` would reach the tap
            if level == 0:
                top = module.split(".")[0]
                assert module.startswith("tap_marketo_activities.sandbox") or \
                    top in sys.stdlib_module_names, where


def test_the_export_columns_are_the_schema_s_base_columns() -> None:
    assert set(base_properties(1)) == set(EXPORT_COLUMNS) == BASE_COLUMNS
    assert len(Columns._fields) == len(EXPORT_COLUMNS)


def test_a_header_is_read_by_the_column_names() -> None:
    header = list(reversed(EXPORT_COLUMNS))
    at = Columns.from_header(header, {})
    assert at.guid == header.index("marketoGUID")
    assert at.action == header.index("actionResult")


def test_defaults_are_the_schema_s() -> None:
    settings = parse_settings(GOOD)
    for field, name in NUMBERS.items():
        assert getattr(settings, field) == PROPERTIES[name]["default"], name
    assert settings.max_export_bytes_per_day == \
        PROPERTIES["max_export_mb_per_day"]["default"] * 1024 * 1024
    assert settings.export_format == PROPERTIES["export_format"]["default"]
    assert settings.backfill_order == PROPERTIES["backfill_order"]["default"]
    assert settings.rest_increments == PROPERTIES["rest_increments"]["default"]


@pytest.mark.parametrize("name", [*NUMBERS.values(), "max_export_mb_per_day"])
def test_ranges_are_the_schema_s(name: str) -> None:
    low, high = PROPERTIES[name]["minimum"], PROPERTIES[name]["maximum"]
    parse_settings({**GOOD, name: low})
    parse_settings({**GOOD, name: high})
    for outside in (low - 1, high + 1):
        with pytest.raises(SettingsError, match=f"^{name} is .*; it accepts a number from "
                                                f"{low:g} to {high:g}.$"):
            parse_settings({**GOOD, name: outside})


@pytest.mark.parametrize("name", ["export_format", "backfill_order", "rest_increments"])
def test_choices_are_the_schema_s(name: str) -> None:
    for choice in PROPERTIES[name]["enum"]:
        assert getattr(parse_settings({**GOOD, name: choice}), name) == choice
    with pytest.raises(SettingsError, match=f"^{name} is 'nope'; it accepts "):
        parse_settings({**GOOD, name: "nope"})
