"""REST sources of rows: Get Deleted Leads pages and Get Lead Activities pages.

A source knows its HTTP and its paging and yields Marketo's activity objects as they come;
it knows nothing of Singer. `delivery.RecordPath` makes records of them, as of export rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from operator import itemgetter
from typing import Any, NamedTuple

from tap_marketo_activities.client import MarketoClient, excerpt
from tap_marketo_activities.instants import isoformat, parse_datetime

PAGING_TOKEN_PATH = "/rest/v1/activities/pagingtoken.json"
DELETED_LEADS_PATH = "/rest/v1/activities/deletedleads.json"
PAGE_SIZE = 300  # Marketo's largest batchSize


def deleted_leads(client: MarketoClient, since: dt.datetime) -> Iterator[Page]:
    """Get Deleted Leads pages from `since` on, up to the present, until Marketo says there
    is no more; trusted no more than Get Lead Activities' (parse_page): an odd answer is
    retried, then raises StillOdd."""
    token = client.read(PAGING_TOKEN_PATH, {"sinceDatetime": isoformat(since)}, first_token,
                        odd_tries=ODD_TRIES)
    while True:
        page = client.read(DELETED_LEADS_PATH, {"nextPageToken": token,
                                                "batchSize": PAGE_SIZE},
                           partial(parse_page, sent=token), odd_tries=ODD_TRIES)
        yield page
        if not page.more or page.token is None:
            return
        token = page.token


LEAD_ACTIVITIES_PATH = "/rest/v1/activities.json"
USAGE_PATH = "/rest/v1/stats/usage.json"
TYPES_PER_READ = 10  # Marketo takes 1 to 10 activityTypeIds per paging sequence
# Tries of one page whose answer is odd (the first call and its retries): a few, so that a
# read stops close to the odd answer instead of paging on (a token that never changes).
ODD_TRIES = 4
SORT_KEY = ("activityDate", "marketoGUID")  # the order a page is put in before use


class Page(NamedTuple):
    """One answer of Get Lead Activities: its activities normalised and in (activityDate,
    marketoGUID) order; `more` is Marketo's moreResult, `token` the next page's."""

    activities: list[dict[str, Any]]
    more: bool
    token: str | None


def lead_activities(client: MarketoClient, since: dt.datetime, type_ids: Sequence[int],
                    before_each: Callable[[], None] | None = None) -> Iterator[Page]:
    """Get Lead Activities pages of these types from `since` on, up to the present, until
    Marketo says there is no more. A page may be short or empty while `more` is true:
    Marketo walks the activity log of every type, a batch at a time. An odd answer is
    retried, then raises StillOdd: never taken for the end. `before_each()` runs before
    every call (a budget)."""
    if not 1 <= len(type_ids) <= TYPES_PER_READ:
        raise ValueError(f"1 to {TYPES_PER_READ} activity types per read, not {len(type_ids)}")
    token = client.read(PAGING_TOKEN_PATH, {"sinceDatetime": isoformat(since)}, first_token,
                        before_each=before_each, odd_tries=ODD_TRIES)
    params = {"activityTypeIds": ",".join(map(str, type_ids)), "batchSize": PAGE_SIZE}
    while True:
        page = client.read(LEAD_ACTIVITIES_PATH, {**params, "nextPageToken": token},
                           partial(parse_page, sent=token), before_each=before_each,
                           odd_tries=ODD_TRIES)
        yield page
        if not page.more or page.token is None:
            return
        token = page.token


def first_token(envelope: Mapping[str, Any]) -> str:
    token = envelope.get("nextPageToken")
    if not isinstance(token, str) or not token:
        raise ValueError(f"no nextPageToken ({excerpt(repr(token))})")
    return token


def parse_page(envelope: Mapping[str, Any], sent: str) -> Page:
    """A page of Get Lead Activities, or ValueError naming what is odd in it: moreResult
    that is not a boolean, the token sent coming back, a result that is not a list of
    activities."""
    more = envelope.get("moreResult")
    if not isinstance(more, bool):
        shown = "no moreResult" if "moreResult" not in envelope else \
            f"moreResult {excerpt(repr(more))}, not a boolean"
        raise ValueError(shown)
    token = envelope.get("nextPageToken")
    if more and (not isinstance(token, str) or not token):
        raise ValueError("moreResult true without a nextPageToken")
    if more and token == sent:
        raise ValueError("the nextPageToken it was sent, with moreResult true")
    result = envelope.get("result", [])
    if not isinstance(result, list):
        raise ValueError(f"a result that is not a list ({excerpt(repr(result))})")
    activities = sorted(map(normalised, result), key=itemgetter(*SORT_KEY))
    return Page(activities, more, token if more else None)


def normalised(item: Any) -> dict[str, Any]:
    """An activity with what gets compared in one form: marketoGUID text, activityDate UTC
    in Marketo's own form, activityTypeId an integer; ValueError when one of them is missing
    or not what it says (such an activity can be neither placed nor routed)."""
    if not isinstance(item, dict):
        raise ValueError(f"an activity that is not an object ({excerpt(repr(item))})")
    guid = item.get("marketoGUID")
    if isinstance(guid, bool) or not isinstance(guid, (str, int)) or guid == "":
        raise ValueError(f"an activity without marketoGUID ({excerpt(repr(item))})")
    date = item.get("activityDate")
    try:
        when = isoformat(parse_datetime(date)) if isinstance(date, str) and date else None
    except ValueError:
        when = None
    if when is None:
        raise ValueError(f"activity {guid}: activityDate {excerpt(repr(date))} is not a "
                         "datetime")
    return {**item, "marketoGUID": str(guid), "activityDate": when,
            "activityTypeId": type_id(item.get("activityTypeId"), guid)}


def type_id(value: Any, guid: Any) -> int:
    """An activity type id as an integer: 1, "1" and 1.0 are type 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.strip().isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"activity {guid}: activityTypeId {excerpt(repr(value))} is not an "
                     "integer")


class Usage(NamedTuple):
    """Get Daily Usage: the US Central day Marketo counts, and the calls of each API user."""

    day: str
    users: dict[str, int]


def daily_usage(client: MarketoClient) -> Usage:
    """Today's calls of the instance per API user, as Marketo counts them."""
    return client.read(USAGE_PATH, {}, parse_usage, odd_tries=ODD_TRIES)


def parse_usage(envelope: Mapping[str, Any]) -> Usage:
    result = envelope.get("result")
    today = result[0] if isinstance(result, list) and result else None
    day = today.get("date") if isinstance(today, dict) else None
    users = today.get("users") if isinstance(today, dict) else None
    if not isinstance(day, str) or not isinstance(users, list) or not all(
            isinstance(u, dict) and isinstance(u.get("userId"), str)
            and type(u.get("count")) is int for u in users):
        raise ValueError(f"no day and calls per user ({excerpt(repr(result))})")
    return Usage(day, {u["userId"]: u["count"] for u in users})
