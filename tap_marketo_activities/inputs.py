"""The command line's input files (--config, --state, --catalog), checked before the SDK reads
them: a missing, unreadable or malformed file is the user's to fix, so the line names the
file and what is wrong with it instead of a stack trace from deep in the SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

FILE_OPTIONS = ("--config", "--state", "--catalog")
ENV_CONFIG = "ENV"  # --config ENV: the settings come from environment variables
JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null"}


def input_files(argv: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(option, path) for each input file the arguments name, as `--opt PATH` or
    `--opt=PATH`; `--config ENV` names none."""
    for position, arg in enumerate(argv):
        option, equals, value = arg.partition("=")
        if option not in FILE_OPTIONS:
            continue
        if not equals:
            if position + 1 >= len(argv):
                continue  # the command line's own parser says what is missing
            value = argv[position + 1]
        if not (option == "--config" and value == ENV_CONFIG):
            yield option, value


def file_problem(option: str, path: str) -> str | None:
    """What is wrong with the file `path` given to `option`, in one line, or None."""
    named = f"{option} file {path!r}"
    file = Path(path)
    if not file.exists():
        return f"{named} does not exist: check the path (relative to {Path.cwd()})."
    if file.is_dir():
        return f"{named} is a folder: give the JSON file in it."
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return f"{named} is not UTF-8 text: it must hold a JSON object."
    except OSError as exc:
        return (f"{named} cannot be read ({exc.strerror or type(exc).__name__}): fix its "
                "permissions.")
    return _json_problem(named, option, text)


def _json_problem(named: str, option: str, text: str) -> str | None:
    if not text.strip():
        empty = "; write {} for no state" if option == "--state" else ""
        return f"{named} is empty: it must hold a JSON object{empty}."
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return (f"{named} is not valid JSON: {exc.msg} at line {exc.lineno} column "
                f"{exc.colno}.")
    if not isinstance(value, dict):
        kind = JSON_KINDS.get(type(value), "value")
        return f"{named} holds a JSON {kind}, not an object ({{...}})."
    return None


def first_problem(argv: Sequence[str]) -> str | None:
    """The first bad input file of the command line, or None."""
    for option, path in input_files(argv):
        problem = file_problem(option, path)
        if problem:
            return problem
    return None
