"""Merge Leads activities (type 32): a sparse series of their own, interleaved in time with
the main series, so that adding them changed no other activity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .catalog import MERGE_LEADS
from .dice import Dice

DAY = 86400
FIRST_GUID = 500000000
# How `Merge IDs` is written: Marketo writes "[1520655,1797020]"; "mixed" cycles the three.
MERGE_IDS_STYLES = ("brackets", "plain", "spaced", "mixed")
# Values that are not a list of integers, for the rows `bad_merge_ids_every` picks.
BAD_MERGE_IDS = ("abc", "[1,x]", "[]", "1;2", "[1.5]")
SOURCES = ("Marketo", "SFDC", "Web Service API", "Lead Database")


def write_ids(ids: list[int], style: str) -> str:
    if style == "plain":
        return ",".join(map(str, ids))
    if style == "spaced":
        return "[" + ", ".join(map(str, ids)) + "]"
    return "[" + ",".join(map(str, ids)) + "]"


class Merges:
    """Merge k happens at data_start + k * step + step // 2 + 7 seconds (an odd second,
    so that it rarely shares one with the main series)."""

    def __init__(self, seed: int, per_day: int, date_text: Callable[[int], str],
                 style: str = "brackets", bad_every: int = 0) -> None:
        if style not in MERGE_IDS_STYLES:
            raise ValueError(f"merge_ids must be one of {', '.join(MERGE_IDS_STYLES)}")
        self.seed = seed
        self.step = max(60, DAY * 24 // per_day)
        self.shift = self.step // 2 + 7
        self.date_text = date_text
        self.style = style
        self.bad_every = max(0, int(bad_every))

    def offset(self, k: int) -> int:
        return k * self.step + self.shift

    def first_at(self, offset: int) -> int:
        """The first merge at or after `offset` seconds from data_start."""
        return max(0, -(-(offset - self.shift) // self.step))

    def count(self, span: int) -> int:
        """How many merges happen before `span` seconds from data_start."""
        return self.first_at(span)

    def parts(self, k: int) -> tuple[int, list[int], str]:
        """The lead kept, the leads merged into it, and `Merge IDs` as written."""
        dice = Dice(self.seed, k, "merge")
        kept = 100000 + dice.pick(900000)
        merged = [100000 + dice.pick(900000) for _ in range(1 + dice.pick(5) // 3)]
        if self.bad_every and k % self.bad_every == self.bad_every - 1:
            return kept, merged, BAD_MERGE_IDS[k // self.bad_every % len(BAD_MERGE_IDS)]
        style = self.style
        if style == "mixed":
            style = MERGE_IDS_STYLES[k % 3]
        return kept, merged, write_ids(merged, style)

    def activity(self, k: int) -> dict[str, Any]:
        kept, _, text = self.parts(k)
        dice = Dice(self.seed, k, "merge-body")
        return {
            "marketoGUID": str(FIRST_GUID + k),
            "leadId": kept,
            "activityDate": self.date_text(self.offset(k)),
            "activityTypeId": MERGE_LEADS,
            "campaignId": None if dice.chance(1, 2) else 1000 + dice.pick(20000),
            "primaryAttributeValueId": kept,
            "primaryAttributeValue": f"Lead {kept}",
            "attributes": {"Merge IDs": text, "Merge Source": SOURCES[dice.pick(len(SOURCES))],
                           "Merged in Sales": dice.chance(1, 3),
                           "Master Updated": dice.chance(1, 2)},
            "actionResult": "succeeded",
        }

    def merged_leads(self, k: int) -> list[dict[str, Any]]:
        """What merge k says: one (lead kept, lead merged away) pair per id, none when its
        `Merge IDs` is not a list of integers."""
        kept, merged, text = self.parts(k)
        if text in BAD_MERGE_IDS:
            return []
        activity_date = self.date_text(self.offset(k))
        return [{"marketoGUID": str(FIRST_GUID + k), "activityDate": activity_date,
                 "leadId": kept, "mergedLeadId": lead} for lead in merged]
