"""Run the sandbox until SIGTERM/SIGINT: `tap-marketo-activities-sandbox` or
`python -m tap_marketo_activities.sandbox`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from .core import Sandbox
from .data import format_time, to_time
from .late import ORDERS

ACTIVITIES_PER_DAY = 2880  # one every 30 s: a few minutes' increment is never empty
LIVE_DAYS = 28
# --config-out's start_date: under a day back however the hour falls, so that a first run can
# read it through Get Lead Activities (the tap tries REST on up to a day while it has no cost
# learnt) with an hour to spare before it is run.
CONFIG_HOURS = 22


DESCRIPTION = f"""\
The fake Marketo bundled with tap-marketo-activities: Marketo's REST and Bulk Activity
Extract API (tokens, error codes in HTTP 200 bodies, job states and slots, quotas, Range
downloads, checksums, Get Lead Activities and Get Deleted Leads paged by token) on
127.0.0.1, with deterministic activities. By default the data are live: they start
{LIVE_DAYS} days ago and run up to the clock, so new activities keep appearing
({ACTIVITIES_PER_DAY} a day) and a run a few minutes after the last one finds a small
increment. It prints "sandbox listening on URL" once it answers and runs until SIGTERM
or Ctrl-C.
Also runs as: python -m tap_marketo_activities.sandbox."""

EPILOG = """\
example:
  tap-marketo-activities-sandbox --port 8765 --config-out sandbox.json &
  tap-marketo-activities --config sandbox.json --discover > catalog.json"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tap-marketo-activities-sandbox", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0,
                        help="TCP port on 127.0.0.1 (default 0: any free port; the URL "
                             "printed at start names it)")
    parser.add_argument("--seed", type=int, default=7,
                        help="seed of the generated activities: the same seed gives the same "
                             "data on every start (default %(default)s)")
    parser.add_argument("--activities-per-day", type=int, default=ACTIVITIES_PER_DAY,
                        help="activities generated per day, spread over the activity types "
                             "(default %(default)s)")
    parser.add_argument("--job-latency", type=float, default=0.3,
                        help="seconds an export job spends Processing before it is Completed "
                             "(default %(default)s; a real Marketo job takes minutes)")
    parser.add_argument("--data-start", default=None,
                        help=f"the first activity's date, ISO-8601 (default: midnight UTC "
                             f"{LIVE_DAYS} days ago)")
    parser.add_argument("--data-end", default="now",
                        help="activities stop before this date, ISO-8601, or 'now' (the "
                             "default): live data up to the clock, where export windows "
                             "and Get Lead Activities show only what is before now")
    parser.add_argument("--late", action="store_true",
                        help="some activities are committed after their activityDate and "
                             "seen only from then on: a third of Send Email 1-20 minutes "
                             "late, an eighth of Visit Webpage 1-6 hours, a quarter of "
                             "Attended Trade Show (custom) 1-12 hours")
    parser.add_argument("--bulk-by", choices=ORDERS, default="date",
                        help="with --late: what an export's createdAt filter selects by, "
                             "activityDate or commit time (default %(default)s)")
    parser.add_argument("--rest-order", choices=ORDERS, default="date",
                        help="with --late: Get Lead Activities pages in activityDate or in "
                             "commit order; in commit order a paging token from "
                             "sinceDatetime X starts at commit time X (default %(default)s)")
    parser.add_argument("--purge", action="store_true",
                        help="Marketo's purge: activities older than their type's retention "
                             "are gone (Delete Lead 14 days; Visit Webpage, Send Email and "
                             "six more 90 days; New Lead never; the others "
                             "--retention-months); give an older --data-start to see it")
    parser.add_argument("--retention-months", type=int, choices=(25, 37), default=25,
                        help="with --purge: months Marketo keeps the other types (37 with "
                             "its paid option; default %(default)s)")
    parser.add_argument("--config-out", default=None, metavar="FILE",
                        help="write a tap config for this sandbox (client_id, client_secret, "
                             "base_url, start_date) to FILE as JSON; with live data "
                             f"start_date is {CONFIG_HOURS} hours ago (on the hour), so a "
                             "first run brings the last day, through Get Lead Activities; "
                             "otherwise it is --data-start")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def dates_problem(data_start: str, data_end: str) -> str | None:
    """What is wrong with --data-start and --data-end, in one line, or None."""
    try:
        start = to_time(data_start)
        end = None if data_end == "now" else to_time(data_end)
    except ValueError:
        return (f"--data-start {data_start!r} and --data-end {data_end!r} must be ISO-8601 "
                "date-times such as 2024-01-01T00:00:00Z (or --data-end now).")
    if end is not None and end <= start:
        return (f"--data-end {data_end} is not after --data-start {data_start}: no activity "
                "would exist. Give a later --data-end, or an earlier --data-start (default: "
                f"{LIVE_DAYS} days ago).")
    return None


def tap_config(sandbox: Sandbox, data_end: str, now: datetime) -> dict[str, Any]:
    """The sandbox's config; with live data, start_date is recent (never before the data)."""
    config = sandbox.config
    if data_end == "now":
        recent = (now - timedelta(hours=CONFIG_HOURS)).replace(minute=0, second=0,
                                                               microsecond=0)
        config["start_date"] = format_time(max(recent, to_time(sandbox.data_start)))
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    now = datetime.now(timezone.utc)
    data_start = args.data_start or format_time(
        (now - timedelta(days=LIVE_DAYS)).replace(hour=0, minute=0, second=0, microsecond=0))
    problem = dates_problem(data_start, args.data_end)
    if problem:
        print(f"tap-marketo-activities-sandbox: {problem}", file=sys.stderr)
        return 2
    sandbox = Sandbox(seed=args.seed, data_start=data_start, data_end=args.data_end,
                      activities_per_day=args.activities_per_day,
                      job_latency=args.job_latency, port=args.port, late=args.late,
                      bulk_by=args.bulk_by, rest_order=args.rest_order, purge=args.purge,
                      retention_months=args.retention_months)
    base_url = sandbox.start()
    try:
        if args.config_out:
            with open(args.config_out, "w", encoding="utf-8") as out:
                json.dump(tap_config(sandbox, args.data_end, now), out, indent=2)
        print(f"sandbox listening on {base_url}", flush=True)
        while not done.wait(0.5):
            pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
