"""Delete Lead activities for deletedleads.json, paged by an opaque token."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from .data import DAY, Dataset, Dice, format_time, to_time
from .jobs import ApiError
from .tokens import Token, decode, encode, numbers


class DeletedLeads:
    """Deletion k happens at data_start + k * step seconds."""

    def __init__(self, seed: int, dataset: Dataset) -> None:
        self.seed = seed
        self.dataset = dataset
        self.step = max(60, DAY * 8 // dataset.per_day)

    @property
    def count(self) -> int:
        """Deletions that can be seen now."""
        return max(0, (self.dataset.visible_span() + self.step - 1) // self.step)

    def record(self, index: int) -> dict[str, Any]:
        dice = Dice(self.seed, index, "deleted")
        lead_id = 100000 + dice.pick(900000)
        moment = self.dataset.start + timedelta(seconds=index * self.step)
        return {
            "id": 900000000 + index,
            "marketoGUID": str(900000000 + index),
            "leadId": lead_id,
            "activityDate": format_time(moment),
            "activityTypeId": 37,
            "primaryAttributeValueId": lead_id,
            "primaryAttributeValue": f"Lead {lead_id}",
            "attributes": [{"name": "Campaign", "value": f"Cleanup Campaign {dice.pick(9)}"}],
        }

    def first_at(self, moment_text: str) -> int:
        try:
            moment = to_time(datetime.fromisoformat(moment_text.replace("Z", "+00:00")))
        except ValueError:
            raise ApiError("1003", f"Invalid sinceDatetime {moment_text!r}") from None
        return self.first_after(moment)

    def first_after(self, moment: datetime) -> int:
        """The first deletion at or after `moment`, seen or not yet."""
        seconds = int((moment - self.dataset.start).total_seconds())
        return max(0, -(-seconds // self.step))

    def token(self, index: int) -> str:
        moment = self.dataset.start + timedelta(seconds=index * self.step)
        return encode(Token(moment, f"d{index}"))

    def position(self, text: str) -> int:
        token = decode(text)
        found = numbers(token.position, "d")
        if found is None:
            return self.first_after(token.instant)
        if len(found) != 1 or found[0] < 0:
            raise ApiError("1003", "Invalid nextPageToken")
        return found[0]

    def first_kept(self) -> int:
        """The first deletion Marketo's purge has not deleted (14 days), when it is on."""
        edge = self.dataset.purge.edge(37) if self.dataset.purge is not None else None
        return 0 if edge is None else self.first_after(edge)

    def page(self, token: str, size: int) -> tuple[list[dict[str, Any]], str, bool]:
        start = max(self.position(token), self.first_kept())
        count = self.count
        end = max(start, min(count, start + size))
        rows = [self.record(k) for k in range(start, end)]
        return rows, self.token(end), end < count

    def expected(self, since: str) -> list[dict[str, Any]]:
        return [self.record(k) for k in range(max(self.first_at(since), self.first_kept()),
                                              self.count)]
