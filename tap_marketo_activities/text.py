"""Small helpers for the words of log lines."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """'1 window', '3 windows', '2 activities'."""
    if count == 1:
        return f"1 {noun}"
    many = noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else \
        noun + "s"
    return f"{count} {many}"
