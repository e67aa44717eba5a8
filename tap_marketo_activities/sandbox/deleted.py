"""Delete Lead activities for deletedleads.json, paged by an opaque token."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

from .data import DAY, Dataset, Dice, format_time, to_time
from .jobs import ApiError


class DeletedLeads:
    """Deletion k happens at data_start + k * step seconds."""

    def __init__(self, seed: int, dataset: Dataset) -> None:
        self.seed = seed
        self.dataset = dataset
        self.step = max(60, DAY * 8 // dataset.per_day)
        self.count = max(0, (dataset.span + self.step - 1) // self.step)

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
        seconds = int((moment - self.dataset.start).total_seconds())
        return min(self.count, max(0, -(-seconds // self.step)))

    def token_for_time(self, moment_text: str) -> str:
        return encode(self.first_at(moment_text))

    def page(self, token: str, size: int) -> tuple[list[dict[str, Any]], str, bool]:
        start = decode(token)
        end = min(self.count, start + size)
        rows = [self.record(k) for k in range(start, end)]
        return rows, encode(end), end < self.count

    def expected(self, since: str) -> list[dict[str, Any]]:
        return [self.record(k) for k in range(self.first_at(since), self.count)]


def encode(index: int) -> str:
    return base64.b32encode(f"deleted:{index}".encode()).decode().rstrip("=")


def decode(token: str) -> int:
    try:
        text = base64.b32decode(token + "=" * (-len(token) % 8)).decode()
        kind, number = text.split(":")
        if kind != "deleted":
            raise ValueError(kind)
        return int(number)
    except (ValueError, UnicodeDecodeError):
        raise ApiError("1003", "Invalid nextPageToken") from None
