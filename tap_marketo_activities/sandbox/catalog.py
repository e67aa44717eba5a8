"""The activity types the sandbox serves from types.json."""

from __future__ import annotations

import copy
from typing import Any

DELETE_LEAD = 37
MERGE_LEADS = 32


def _attrs(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "dataType": data_type} for name, data_type in pairs]


def _type(
    type_id: int,
    name: str,
    description: str,
    primary: tuple[str, str] | None,
    attributes: list[dict[str, str]] | None,
    api_name: str | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {"id": type_id}
    if api_name:
        item["apiName"] = api_name
    item["name"] = name
    item["description"] = description
    if primary:
        item["primaryAttribute"] = {"name": primary[0], "dataType": primary[1]}
    if attributes is not None:
        item["attributes"] = attributes
    return item


_WEB = (
    ("Client IP Address", "string"),
    ("Query Parameters", "string"),
    ("Referrer URL", "string"),
    ("User Agent", "string"),
)
_MAILING = (
    ("Campaign Run ID", "integer"),
    ("Choice Number", "integer"),
    ("Step ID", "integer"),
)

ACTIVITY_TYPES: list[dict[str, Any]] = [
    _type(1, "Visit Webpage", "User visits a web page", ("Webpage ID", "integer"), _attrs(
        ("Client IP Address", "string"), ("Personalized URL", "boolean"),
        ("Query Parameters", "string"), ("Referrer URL", "string"),
        ("User Agent", "string"), ("Webpage URL", "string"),
    )),
    _type(2, "Fill Out Form", "User fills out and submits form on web page",
          ("Webform ID", "integer"),
          _attrs(*_WEB, ("Form Fields", "text"), ("Webpage ID", "integer"))),
    _type(3, "Click Link", "User clicks link on a page", ("Link ID", "integer"),
          _attrs(*_WEB, ("Webpage ID", "integer"))),
    _type(6, "Send Email", "Send Marketo Email to a person", ("Mailing ID", "integer"),
          _attrs(*_MAILING)),
    _type(7, "Email Delivered", "Marketo Email is delivered to a person",
          ("Mailing ID", "integer"), _attrs(*_MAILING)),
    _type(8, "Email Bounced", "Marketo Email bounces", ("Mailing ID", "integer"), _attrs(
        *_MAILING, ("Category", "string"), ("Details", "text"),
        ("Email", "email"), ("Subcategory", "string"),
    )),
    _type(9, "Unsubscribe Email", "Person unsubscribes from Marketo Emails",
          ("Mailing ID", "integer"), None),
    _type(10, "Open Email", "User opens Marketo Email", ("Mailing ID", "integer"), _attrs(
        *_MAILING, ("Device", "string"), ("Is Mobile Device", "boolean"),
        ("Platform", "string"), ("User Agent", "string"), ("Is Bot Activity", "boolean"),
    )),
    _type(11, "Click Email", "User clicks on a link in a Marketo Email",
          ("Mailing ID", "integer"), _attrs(
              *_MAILING, ("Link", "link"), ("Link ID", "string"),
              ("Device", "string"), ("Is Mobile Device", "boolean"),
          )),
    _type(12, "New Lead", "New person/record is added to the lead database", None, _attrs(
        ("Source Type", "string"), ("Created Date", "date"), ("Form Name", "string"),
        ("List Name", "string"), ("Lead Source", "string"),
    )),
    _type(13, "Change Data Value", "Changed attribute value for a person",
          ("Attribute Name", "integer"), _attrs(
              ("New Value", "string"), ("Old Value", "string"),
              ("Reason", "string"), ("Source", "string"),
          )),
    _type(22, "Change Score", "Change a score", ("Attribute Name", "integer"), _attrs(
        ("Change Value", "string"), ("New Value", "integer"), ("Old Value", "integer"),
        ("Reason", "string"), ("Urgency", "float"), ("Relative Score", "score"),
    )),
    _type(24, "Add to List", "Person is added to a list", ("List ID", "integer"),
          _attrs(("Source", "string"))),
    _type(25, "Remove from List", "Person is removed from a list", ("List ID", "integer"),
          _attrs(("Source", "string"))),
    # Marketo types Merge IDs as an integer and writes a list in it: "[1520655,1797020]".
    _type(MERGE_LEADS, "Merge Leads", "Merge two or more leads", ("Lead ID", "integer"),
          _attrs(("Merge IDs", "integer"), ("Merge Source", "string"),
                 ("Merged in Sales", "boolean"), ("Master Updated", "boolean"))),
    _type(DELETE_LEAD, "Delete Lead", "Delete a person", ("Lead ID", "integer"),
          _attrs(("Campaign", "string"))),
    _type(46, "Interesting Moment", "Interesting moment", ("Milestone ID", "integer"), _attrs(
        ("Type", "string"), ("Description", "text"), ("Source", "string"),
        ("Date", "datetime"),
    )),
    _type(104, "Change Status in Progression", "Change a program status",
          ("Program ID", "integer"), _attrs(
              ("Program Member ID", "integer"), ("Acquired By", "boolean"),
              ("Old Status", "string"), ("New Status", "string"), ("Success", "boolean"),
              ("Reason", "string"), ("Webinar URL", "link"),
          )),
    _type(100001, "Attended Trade Show", "Visited our booth at a trade show",
          ("Trade Show Code", "string"), _attrs(
              ("Booth Phone", "phone"), ("Contact Email", "email"), ("Show Website", "url"),
              ("Deal Size", "currency"), ("Discount", "percent"), ("Lead Score", "score"),
              ("Account", "reference"), ("Booth Location", "geoPoint"),
              ("Visited On", "date"), ("Checked In At", "datetime"),
          ), api_name="attendedTradeShow_c"),
    _type(100002, "Webinar Attended (Zoom)", "Attended a Zoom webinar",
          ("Webinar ID", "integer"), _attrs(
              ("Minutes Attended", "integer"), ("Asked Question", "boolean"),
              ("Join URL", "url"),
          ), api_name="webinarAttendedZoom_c"),
    _type(100003, "Webinar Attended Zoom", "Attended a Zoom webinar (legacy type)",
          ("Webinar ID", "integer"), _attrs(
              ("Minutes Attended", "integer"), ("Feedback", "text"),
          ), api_name="webinarAttendedZoomLegacy_c"),
]

# Asset groups that primaryAttributeValueIds / primaryAttributeValues may filter on.
FILTER_GROUPS: list[frozenset[int]] = [
    frozenset({13, 22}),
    frozenset({104}),
    frozenset({24, 25}),
    frozenset({2}),
]


def activity_types() -> list[dict[str, Any]]:
    return copy.deepcopy(ACTIVITY_TYPES)


def exportable_types() -> list[dict[str, Any]]:
    return [t for t in ACTIVITY_TYPES if t["id"] != DELETE_LEAD]


def generated_types() -> list[dict[str, Any]]:
    """The types of the main series of activities (Merge Leads has a series of its own, so
    that adding it left every other activity as it was)."""
    return [t for t in exportable_types() if t["id"] != MERGE_LEADS]


def filter_group(type_id: int) -> frozenset[int] | None:
    for group in FILTER_GROUPS:
        if type_id in group:
            return group
    return None
