"""REST sources of rows: Get Deleted Leads pages and Get Lead Activities pages.

A source knows its HTTP and its paging and yields Marketo's activity objects as they come;
it knows nothing of Singer. `delivery.RecordPath` makes records of them, as of export rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from tap_marketo_activities.client import MarketoClient
from tap_marketo_activities.instants import isoformat

PAGING_TOKEN_PATH = "/rest/v1/activities/pagingtoken.json"
DELETED_LEADS_PATH = "/rest/v1/activities/deletedleads.json"
PAGE_SIZE = 300  # Marketo's largest batchSize


def paging_token(client: MarketoClient, since: dt.datetime) -> str | None:
    """A token that starts paging at `since` (inclusive)."""
    token = client.get(PAGING_TOKEN_PATH, {"sinceDatetime": isoformat(since)}).get(
        "nextPageToken")
    return str(token) if token else None


def deleted_leads(client: MarketoClient, since: dt.datetime) -> Iterator[dict[str, Any]]:
    """Every Delete Lead activity from `since` on, up to the present."""
    token = paging_token(client, since)
    if token:
        yield from client.pages(DELETED_LEADS_PATH,
                                {"nextPageToken": token, "batchSize": PAGE_SIZE})


LEAD_ACTIVITIES_PATH = "/rest/v1/activities.json"
TYPES_PER_READ = 10  # Marketo takes 1 to 10 activityTypeIds per paging sequence


class Page(NamedTuple):
    activities: list[dict[str, Any]]
    more: bool  # Marketo may have more after this page (even when this one is empty)


def lead_activities(client: MarketoClient, since: dt.datetime, type_ids: Sequence[int],
                    before_each: Callable[[], None] | None = None) -> Iterator[Page]:
    """Get Lead Activities pages of these types from `since` on, up to the present. A
    page may be short or empty while `more` is true: Marketo walks the activity log of
    every type, a batch at a time. `before_each()` runs before every call (a budget)."""
    if not 1 <= len(type_ids) <= TYPES_PER_READ:
        raise ValueError(f"1 to {TYPES_PER_READ} activity types per read, not {len(type_ids)}")
    token = client.get(PAGING_TOKEN_PATH, {"sinceDatetime": isoformat(since)},
                       before_each=before_each).get("nextPageToken")
    params = {"activityTypeIds": ",".join(map(str, type_ids)), "batchSize": PAGE_SIZE}
    while token:
        envelope = client.get(LEAD_ACTIVITIES_PATH, {**params, "nextPageToken": token},
                              check=_activities_problem, before_each=before_each)
        more = envelope.get("moreResult") is True
        yield Page(envelope.get("result") or [], more)
        token = envelope.get("nextPageToken") if more else None


def _activities_problem(result: Any) -> str | None:
    if not all(isinstance(a, dict) and a.get("marketoGUID") and a.get("activityDate")
               for a in result or []):
        return "an activity without marketoGUID or activityDate"
    return None
