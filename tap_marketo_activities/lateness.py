"""The `Late activities:` line: how many activities arrived after their second had been
read, by type, and how late (median, most).

An activity is late when its activityDate lies before the bookmark its stream had at the
start of the run that delivered it; its lateness is how far before that bookmark it lies.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable

from tap_marketo_activities.schema import STREAM_PREFIX

MINUTE, HOUR, DAY = 60, 3600, 86400


def duration_text(seconds: float) -> str:
    """'40 s', '4 min', '3 h 10 min', '2 d 5 h': two units at most, rounded down below
    the first (a lateness is never overstated)."""
    whole = max(0, int(seconds))
    if whole < MINUTE:
        return f"{whole} s"
    if whole < HOUR:
        return f"{whole // MINUTE} min"
    if whole < DAY:
        big, unit, small, small_unit = whole // HOUR, "h", whole % HOUR // MINUTE, "min"
    else:
        big, unit, small, small_unit = whole // DAY, "d", whole % DAY // HOUR, "h"
    return f"{big} {unit} {small} {small_unit}" if small else f"{big} {unit}"


def type_label(stream_name: str) -> str:
    """'activities_send_email' -> 'Send Email': the type's name as its stream spells it."""
    words = stream_name.removeprefix(STREAM_PREFIX).split("_")
    return " ".join(word.capitalize() for word in words if word)


def late_line(late: Iterable[tuple[str, float]]) -> str:
    """`Late activities: 37 (Send Email 35, Visit Webpage 2), 4 min median, 3 h 10 min at
    most.` from (type name, lateness in seconds) pairs; types by count, then name."""
    pairs = list(late)
    if not pairs:
        return "Late activities: none."
    counts = Counter(name for name, _ in pairs)
    kinds = ", ".join(f"{name} {count}" for name, count in
                      sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    ages = [age for _, age in pairs]
    return (f"Late activities: {len(pairs)} ({kinds}), "
            f"{duration_text(statistics.median_low(ages))} median, "
            f"{duration_text(max(ages))} at most.")
