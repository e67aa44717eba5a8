"""Settings: the JSON schema the SDK validates, and the checks and normalising it cannot do.

Every check here runs before any network call, and every failure names the setting and
what it accepts.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from singer_sdk import typing as th

from tap_marketo_activities.instants import parse_datetime
from tap_marketo_activities.quota import MB
from tap_marketo_activities.retention import RETENTION_MONTHS

MAX_WINDOW_DAYS = 31  # Marketo refuses a createdAt range over 31 days
EXPORT_FORMATS = ("CSV", "TSV", "SSV")
BACKFILL_ORDERS = ("oldest_first", "newest_first")
REST_INCREMENTS = ("auto", "off", "always")
MAX_LOOKBACK_HOURS = 2160  # 90 days: how long Munchkin keeps an anonymous visitor's visits


def _number_type(minimum: float, maximum: float) -> th.CustomType:
    # Numbers may come as text: the SDK passes environment variables of number settings as
    # is. JSON schema applies the range to numbers only; parse_settings checks text too.
    return th.CustomType({"type": ["number", "string"], "minimum": minimum, "maximum": maximum})


# Each setting's default, range and choices are declared here only: parse_settings reads
# them back from this schema.
CONFIG_SCHEMA = th.PropertiesList(
    th.Property("client_id", th.StringType, required=True, title="Client ID",
                description="Client ID of the LaunchPoint API service (Admin > LaunchPoint "
                            "> View Details)."),
    th.Property("client_secret", th.StringType, required=True, secret=True,
                title="Client Secret", description="Client Secret of the same API service."),
    th.Property("base_url", th.StringType, required=True, title="Base URL",
                description="The REST endpoint from Admin > Web Services, e.g. "
                            "https://284-RPR-133.mktorest.com/rest (the /rest or /identity "
                            "suffix is optional)."),
    th.Property("start_date", th.StringType, required=True, title="Start date",
                description="Sync activities created at or after this ISO-8601 date or "
                            "datetime (UTC when no offset is given)."),
    th.Property("end_date", th.StringType, title="End date",
                description="Sync activities created before this date or datetime. "
                            "Default: now."),
    th.Property("window_days", th.IntegerType(minimum=1, maximum=MAX_WINDOW_DAYS),
                default=MAX_WINDOW_DAYS, title="Window (days)",
                description=f"Width of one export job's createdAt window, 1 to "
                            f"{MAX_WINDOW_DAYS}."),
    th.Property("activity_type_ids", th.ArrayType(th.IntegerType), title="Activity type ids",
                description="Offer only these activity types as streams. Default: all."),
    th.Property("poll_interval_seconds", _number_type(0.01, 3600), default=60,
                title="Poll interval",
                description="Longest wait between two status polls of a job. The first poll "
                            "comes after a few seconds and the wait grows to this."),
    th.Property("job_timeout_seconds", _number_type(1, 7 * 86400), default=3 * 3600,
                title="Job timeout",
                description="A job not Completed this long after it was enqueued is "
                            "cancelled and created again once, then the sync fails."),
    th.Property("max_jobs_in_queue", th.IntegerType(minimum=1, maximum=10), default=4,
                title="Jobs in queue",
                description="Most of this tap's export jobs Queued or Processing at once, 1 "
                            "to 10 (Marketo allows 10 per instance, shared with other tools "
                            "and processes 2 at a time)."),
    th.Property("max_export_mb_per_day", _number_type(0.001, 100_000), default=400,
                title="Export MB per day",
                description="Stop cleanly before this tap's exports of the day (US Central) "
                            "would pass this many MB (1 MB = 1,048,576 bytes). Marketo's "
                            "500 MB is shared by every bulk export of the instance."),
    th.Property("api_limit_share", _number_type(0.1, 1), default=0.8, title="Share of API limits",
                description="Fraction (0.1 to 1) of Marketo's 100 calls per 20 s and 10 "
                            "concurrent calls that this tap may use."),
    th.Property("request_timeout_seconds", _number_type(0.1, 3600), default=120,
                title="Request timeout",
                description="Read timeout of one HTTP call; a stalled download resumes."),
    th.Property("max_retry_seconds", _number_type(0, 86400), default=300, title="Retry budget",
                description="How long one call is retried through transient errors before "
                            "the sync fails."),
    th.Property("max_job_attempts", th.IntegerType(minimum=1, maximum=10), default=3,
                title="Job attempts",
                description="How often a window's job is created again after it Failed."),
    th.Property("export_format", th.StringType, default=EXPORT_FORMATS[0],
                allowed_values=list(EXPORT_FORMATS), title="Export format",
                description="File format Marketo writes: CSV, TSV or SSV. Records are the "
                            "same; it matters for raw files kept with raw_files_dir."),
    th.Property(
        "primary_attribute_filters",
        th.ObjectType(additional_properties=th.ObjectType(
            th.Property("ids", th.ArrayType(th.IntegerType)),
            th.Property("values", th.ArrayType(th.StringType)),
        )),
        title="Primary attribute filters",
        description="Per activity type id, export only activities whose primary attribute "
                    "is one of these: {\"2\": {\"values\": [\"Program.Form\"]}, \"104\": "
                    "{\"ids\": [1001]}}. Types 2 (form), 13 and 22 (lead field), 24 and 25 "
                    "(static list) and 104 (program); at most 50 ids or values, not both.",
    ),
    th.Property("backfill_order", th.StringType, default=BACKFILL_ORDERS[0],
                allowed_values=list(BACKFILL_ORDERS), title="Backfill order",
                description="oldest_first: windows from start_date on. newest_first: the "
                            "newest windows first, then backward to start_date; every later "
                            "run first brings what is new, then goes on backward."),
    th.Property("retention_months", th.IntegerType, default=RETENTION_MONTHS[0],
                allowed_values=list(RETENTION_MONTHS), title="Retention (months)",
                description="How many months Marketo keeps activities of the types it "
                            "keeps longer than 90 days: 25, or 37 with Marketo's paid "
                            "option. Nothing older is asked for."),
    th.Property("rest_increments", th.StringType, default=REST_INCREMENTS[0],
                allowed_values=list(REST_INCREMENTS), title="REST increments",
                description="auto: small increments (and days when the export quota is "
                            "gone) are read through Get Lead Activities, within "
                            "max_rest_calls_per_day, in seconds instead of an export job's "
                            "20-70 minutes; the rest through bulk export. off: bulk export "
                            "only. always: every window through Get Lead Activities."),
    # 10,000 is a fifth of the instance's 50,000 daily calls, which every integration
    # shares: it reads hourly increments of an instance with up to ~100,000 activities a
    # day (all types count: the read walks the whole activity log) and leaves the rest to
    # others.
    th.Property("max_rest_calls_per_day", th.IntegerType(minimum=0, maximum=50_000),
                default=10_000, title="REST calls per day",
                description="Most Get Lead Activities calls (and their paging tokens) this "
                            "tap makes per US Central day, counted across runs in the state. "
                            "Marketo allows 50,000 API calls a day per instance, shared by "
                            "every integration. 0 turns REST reads off."),
    # 4 hours: Send Email, the bulk of what comes late, is committed within minutes (an
    # hour or two for a big send: Marketo's own example of a 2-hourly pull missed a quarter
    # of the sends), and a visitor who becomes known mostly does so in the session of its
    # visits. Each run re-reads this much: hourly runs read 5 hours instead of 1. Munchkin's
    # 90 days would cost 2,160 hours of reading a run (docs/late-activities.md).
    th.Property("lookback_hours", th.IntegerType(minimum=0, maximum=MAX_LOOKBACK_HOURS),
                default=4, title="Lookback (hours)",
                description="Every run reads again the last this many hours before each "
                            "stream's bookmark and delivers only the activities it has not "
                            "delivered before: Marketo commits some activities after later "
                            "ones (Send Email minutes late, Munchkin visits and custom "
                            "activities with older dates). 0 to 2160 (90 days); 0 turns it "
                            "off. It costs calls or export MB on every run; see "
                            "docs/late-activities.md."),
    th.Property("heartbeat_seconds", _number_type(1, 3600), default=60, title="Heartbeat",
                description="While export jobs are queued or processing, an INFO line this "
                            "often says what each is doing and the time left."),
    th.Property("raw_files_dir", th.StringType, title="Raw files folder",
                description="Keep every export file here as Marketo sent it (checksum "
                            "verified), with a JSON sidecar describing its job."),
    th.Property("raw_files_column_header_names", th.ObjectType(
                    additional_properties=th.StringType),
                title="Raw files header names",
                description="Header names for the raw files, e.g. {\"attributes\": "
                            "\"Secondary Attributes\"} (Marketo's columnHeaderNames)."),
).to_dict()
PROPERTIES: Mapping[str, Mapping[str, Any]] = CONFIG_SCHEMA["properties"]
REQUIRED: list[str] = list(CONFIG_SCHEMA["required"])

# Activity types whose exports Marketo lets filter by primary attribute, and what it is.
FILTERABLE = {2: "form", 13: "lead field", 22: "lead field", 24: "static list",
              25: "static list", 104: "program"}
NAMED_AS_PROGRAM_ASSET = {2, 24, 25, 104}
MAX_FILTER_VALUES = 50


@dataclass(frozen=True)
class PrimaryFilter:
    """Marketo's primaryAttributeValueIds (kind "ids") or primaryAttributeValues ("values")."""

    kind: str
    values: tuple[Any, ...]

    def body(self) -> dict[str, list[Any]]:
        key = "primaryAttributeValueIds" if self.kind == "ids" else "primaryAttributeValues"
        return {key: list(self.values)}


class SettingsError(ValueError):
    """One bad setting; the message names it and says what it accepts."""


@dataclass(frozen=True)
class Settings:
    base_url: str
    client_id: str
    client_secret: str
    start: dt.datetime
    end: dt.datetime
    window_days: int
    activity_type_ids: tuple[int, ...] | None
    poll_interval: float
    job_timeout: float
    max_jobs_in_queue: int
    max_export_bytes_per_day: float
    api_limit_share: float
    request_timeout: float
    max_retry_seconds: float
    max_job_attempts: int
    export_format: str
    backfill_order: str
    retention_months: int
    heartbeat_seconds: float
    rest_increments: str
    max_rest_calls_per_day: int
    lookback_hours: int
    primary_filters: Mapping[int, PrimaryFilter] = field(default_factory=dict)
    raw_files_dir: Path | None = None
    column_header_names: Mapping[str, str] = field(default_factory=dict)


# A host name (letters, digits, dots, hyphens) or an IPv6 literal in brackets.
HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def normalize_base_url(value: str) -> str:
    """What the admin screen shows (with /rest or /identity, with or without a trailing
    slash) or any http(s)://host:port -> scheme://host[:port]."""
    text = (value or "").strip().rstrip("/")
    text = re.sub(r"/(rest|identity)$", "", text, flags=re.IGNORECASE)
    parts = urlsplit(text)
    if "@" in parts.netloc:
        # requests would send them as HTTP Basic, to Marketo or to whoever answers.
        raise SettingsError("base_url must not carry a user name or password (user:pw@host): "
                            "the tap signs in with client_id and client_secret only.")
    host = parts.netloc.rsplit(":", 1)[0] if not parts.netloc.endswith("]") else parts.netloc
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or \
            parts.query or parts.fragment or not HOST.fullmatch(host):
        raise SettingsError(
            f"base_url {value!r} is not a Marketo endpoint. Expected the REST endpoint from "
            "Admin > Web Services, like https://284-RPR-133.mktorest.com or "
            "https://284-RPR-133.mktorest.com/rest (or http(s)://host:port)."
        )
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise SettingsError(f"base_url {value!r} has an invalid port.") from None
    return f"{parts.scheme}://{parts.netloc}"


def parse_instant(name: str, value: Any) -> dt.datetime:
    """An ISO-8601 date or datetime; UTC when it has no offset; to whole seconds."""
    try:
        return parse_datetime(str(value).strip()).replace(microsecond=0)
    except ValueError:
        raise SettingsError(
            f"{name} {value!r} is not an ISO-8601 date or datetime, e.g. 2024-01-01 or "
            "2024-01-01T00:00:00Z."
        ) from None


def _number(config: Mapping[str, Any], name: str) -> float:
    """A number setting, in the range and with the default CONFIG_SCHEMA declares."""
    prop = PROPERTIES[name]
    low, high, default = prop["minimum"], prop["maximum"], prop["default"]
    value = config.get(name, default)
    if value is None:
        return float(default)
    # The SDK reads JSON numbers as Decimal, and environment variables as text.
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not low <= number <= high:
        raise SettingsError(f"{name} is {value!r}; it accepts a number from {low:g} to {high:g}.")
    return number


def _integer(config: Mapping[str, Any], name: str) -> int:
    return int(_number(config, name))


def _choice(config: Mapping[str, Any], name: str, normal: Callable[[str], str]) -> str:
    """One of the setting's `enum` (matched after `normal`), or its default."""
    prop = PROPERTIES[name]
    value = config.get(name)
    text = normal(str(value)) if value else str(prop["default"])
    allowed = [str(choice) for choice in prop["enum"]]
    if text not in allowed:
        choices = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
        raise SettingsError(f"{name} is {value!r}; it accepts {choices}.")
    return text


def required_problem(config: Mapping[str, Any]) -> str | None:
    """The line for required settings that are missing, naming a close unknown one (a typo)
    and, when nothing at all was given, where settings come from."""
    missing = [name for name in REQUIRED if not config.get(name)]
    if not missing:
        return None
    # The SDK fills in the defaults: only the other values were given.
    given = [name for name, value in config.items() if not name.startswith("_") and
             (name not in PROPERTIES or value != PROPERTIES[name].get("default"))]
    unknown = [name for name in given if name not in PROPERTIES]
    typos = [f"{typo!r}: did you mean {name!r}?" for name in missing
             for typo in difflib.get_close_matches(name, unknown, n=1)]
    listing = _listing(REQUIRED)
    if not given:
        return (f"No settings given: pass --config FILE (a JSON object with {listing}) or "
                f"--config ENV with TAP_MARKETO_ACTIVITIES_{REQUIRED[0].upper()} and the like "
                "set.")
    verb = "is" if len(missing) == 1 else "are"
    hint = f" The config has {'; '.join(typos)}" if typos else ""
    return f"{_listing(missing)} {verb} required (the tap needs {listing}).{hint}"


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def parse_settings(config: Mapping[str, Any], now: dt.datetime | None = None) -> Settings:
    """Check and normalise the config. Raises SettingsError naming the first bad setting."""
    problem = required_problem(config)
    if problem:
        raise SettingsError(problem)
    now = (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    start = parse_instant("start_date", config["start_date"])
    end = parse_instant("end_date", config["end_date"]) if config.get("end_date") else now
    # A bookmark in the future would skip what is created between now and then.
    end = min(end, now)
    if start >= end:
        raise SettingsError(
            f"start_date ({start:%Y-%m-%dT%H:%M:%SZ}) must be before end_date "
            f"({end:%Y-%m-%dT%H:%M:%SZ}; default now)."
        )
    type_ids = config.get("activity_type_ids")
    if type_ids is not None and (
        not isinstance(type_ids, list) or not type_ids
        or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in type_ids)
    ):
        raise SettingsError(f"activity_type_ids is {type_ids!r}; it accepts a non-empty list "
                            "of positive type ids (e.g. [1, 12]), or leave it out for all.")
    return Settings(
        base_url=normalize_base_url(str(config["base_url"])),
        client_id=str(config["client_id"]),
        client_secret=str(config["client_secret"]),
        start=start,
        end=end,
        window_days=_integer(config, "window_days"),
        activity_type_ids=tuple(type_ids) if type_ids else None,
        poll_interval=_number(config, "poll_interval_seconds"),
        job_timeout=_number(config, "job_timeout_seconds"),
        max_jobs_in_queue=_integer(config, "max_jobs_in_queue"),
        max_export_bytes_per_day=_number(config, "max_export_mb_per_day") * MB,
        api_limit_share=_number(config, "api_limit_share"),
        request_timeout=_number(config, "request_timeout_seconds"),
        max_retry_seconds=_number(config, "max_retry_seconds"),
        max_job_attempts=_integer(config, "max_job_attempts"),
        export_format=_choice(config, "export_format", str.upper),
        backfill_order=_choice(config, "backfill_order", str.lower),
        retention_months=int(_choice(config, "retention_months", str)),
        heartbeat_seconds=_number(config, "heartbeat_seconds"),
        rest_increments=_choice(config, "rest_increments", str.lower),
        max_rest_calls_per_day=_integer(config, "max_rest_calls_per_day"),
        lookback_hours=_integer(config, "lookback_hours"),
        primary_filters=parse_primary_filters(config.get("primary_attribute_filters")),
        raw_files_dir=_writable_folder("raw_files_dir", config.get("raw_files_dir")),
        column_header_names=_header_names(config.get("raw_files_column_header_names")),
    )


def _writable_folder(name: str, value: Any) -> Path | None:
    """The folder, created and proven writable now: before any export spends quota."""
    if not value:
        return None
    folder = Path(str(value)).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SettingsError(f"{name} {str(value)!r} cannot be written to "
                            f"({exc.strerror or type(exc).__name__}): give the tap's user "
                            "write access, or choose another folder.") from None
    return folder


def unknown_settings(config: Mapping[str, Any], schema: Mapping[str, Any]
                     ) -> list[tuple[str, str | None]]:
    """Each setting the schema does not know (a typo?), with the closest known name. The
    schema is the tap's config schema as the SDK extends it with its own settings."""
    known = list(schema.get("properties", {}))
    return [(name, next(iter(difflib.get_close_matches(name, known, n=1)), None))
            for name in config if name not in known and not name.startswith("_")]


def _header_names(value: Any) -> dict[str, str]:
    if not value:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise SettingsError("raw_files_column_header_names accepts an object of field name to "
                            'header text, e.g. {"attributes": "Secondary Attributes"}.')
    return dict(value)


def parse_primary_filters(value: Any) -> dict[int, PrimaryFilter]:
    """Marketo's rules for primary attribute filters, checked before any call."""
    if not value:
        return {}
    name = "primary_attribute_filters"
    if not isinstance(value, dict):
        raise SettingsError(f"{name} accepts an object keyed by activity type id.")
    filters = {}
    for key, rule in value.items():
        type_id = int(key) if str(key).isdigit() else None
        if type_id not in FILTERABLE:
            raise SettingsError(
                f"{name}[{key!r}]: Marketo filters by primary attribute only types "
                + ", ".join(f"{t} ({what})" for t, what in FILTERABLE.items()) + "."
            )
        filters[type_id] = _primary_filter(f"{name}[{key!r}]", type_id, rule)
    return filters


def _primary_filter(where: str, type_id: int, rule: Any) -> PrimaryFilter:
    if not isinstance(rule, dict) or len(rule) != 1 or next(iter(rule)) not in ("ids", "values"):
        raise SettingsError(f'{where} takes either {{"ids": [...]}} or {{"values": [...]}}, '
                            "not both.")
    kind, values = next(iter(rule.items()))
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_FILTER_VALUES:
        raise SettingsError(f"{where}.{kind} takes a list of 1 to {MAX_FILTER_VALUES} items.")
    wanted = int if kind == "ids" else str
    if not all(isinstance(v, wanted) and not isinstance(v, bool) for v in values):
        raise SettingsError(f"{where}.{kind} takes {'integers' if kind == 'ids' else 'strings'}.")
    if kind == "values" and type_id in NAMED_AS_PROGRAM_ASSET:
        bad = [v for v in values if not re.fullmatch(r"[^.]+\..+", v)]
        if bad:
            raise SettingsError(f"{where}.values: {FILTERABLE[type_id]} names are written "
                                f"Program.Asset, e.g. 'Webinar 2024.Registration Form'; not "
                                f"{bad[0]!r}.")
    return PrimaryFilter(kind, tuple(values))
