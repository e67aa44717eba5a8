"""Paging tokens: one kind for every activity endpoint, as Marketo's.

A token is base32 of "<instant>,<position>" (Marketo's decode to e.g.
"2008-11-06T00:00:00.000+0000,0"). The instant lets any endpoint turn a token into its own
position; the position, when it names the endpoint's own series, says exactly where it
stopped (several activities can share the instant)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timezone

from .jobs import ApiError

INSTANT = "%Y-%m-%dT%H:%M:%S.000%z"


@dataclass(frozen=True)
class Token:
    instant: datetime
    position: str = "0"  # "0": only the instant; "a<i>.<m>": the activity log; "d<k>": deletions


def encode(token: Token) -> str:
    text = f"{token.instant.astimezone(timezone.utc).strftime(INSTANT)},{token.position}"
    return base64.b32encode(text.encode()).decode().rstrip("=")


def decode(text: str) -> Token:
    try:
        plain = base64.b32decode(text + "=" * (-len(text) % 8)).decode()
        instant, position = plain.split(",")
        return Token(datetime.strptime(instant, INSTANT).astimezone(timezone.utc), position)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("1003", "Invalid nextPageToken") from None


def numbers(position: str, kind: str) -> list[int] | None:
    """The numbers of a position of this kind ("a" or "d"), or None for another kind."""
    if not position.startswith(kind):
        return None
    try:
        return [int(part) for part in position[1:].split(".")]
    except ValueError:
        raise ApiError("1003", "Invalid nextPageToken") from None
