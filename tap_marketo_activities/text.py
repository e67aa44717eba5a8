"""Small helpers for the words of log lines."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """'1 window', '3 windows'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
