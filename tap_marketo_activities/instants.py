"""Timestamps: ISO-8601 text in any UTC offset form in, Marketo's own form out.

Marketo writes `2024-01-01T10:00:00Z`; its API reference and some files write
`2024-01-01T10:00:00+0000`, and an offset may be any (`-0500`, `+05:30`). Records,
bookmarks and state all carry the one form `isoformat` writes, so that they compare as
strings.
"""

from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc


def parse_datetime(text: str) -> dt.datetime:
    """An ISO-8601 date or datetime with `Z`, `+0000`, `+00:00`, another offset, or none
    (read as UTC), in UTC. ValueError when it is none of these."""
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    elif len(text) > 10 and text[-5] in "+-" and text[-4:].isdigit():
        text = f"{text[:-2]}:{text[-2:]}"  # +0000: Python before 3.11 wants +00:00
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def isoformat(instant: dt.datetime) -> str:
    """Marketo's own form (UTC, second precision, Z): bookmarks compare as strings."""
    # Not strftime: slower, and it does not pad years before 1000 to four digits.
    return instant.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def utc_text(text: str) -> str:
    """Any ISO-8601 datetime text in Marketo's own form; ValueError when it is not one."""
    if is_utc_text(text):  # already the form, as in most files: checked, not rewritten
        dt.datetime.fromisoformat(text[:19])
        return text
    return isoformat(parse_datetime(text))


def is_utc_text(text: str) -> bool:
    """Whether text looks like Marketo's own form already (the record path's fast path: it
    inlines this test)."""
    return text[19:] == "Z"
