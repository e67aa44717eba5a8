"""Get Deleted Leads: type 37's rows, from the stream's bookmark to the end, as one window
through the one record path. Its pages are trusted no more than Get Lead Activities': a
read ends on `moreResult: false` or a page whose new rows all lie past the window (pages are
in date order; one row dated in the future is no end); a row seen before is skipped and
counted; an odd answer, still odd after its retries, stops the read with the bookmark where
it was."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

from tap_marketo_activities.client import StillOdd
from tap_marketo_activities.delivery import Window
from tap_marketo_activities.increments import report_skipped, sift
from tap_marketo_activities.instants import isoformat
from tap_marketo_activities.records import Problems
from tap_marketo_activities.rest import ODD_TRIES, deleted_leads
from tap_marketo_activities.retention import KEPT_DAYS
from tap_marketo_activities.roads import Context
from tap_marketo_activities.schema import DELETE_LEAD_TYPE_ID
from tap_marketo_activities.streams import ActivityStream

logger = logging.getLogger(__name__)

DELETED_LEADS_KEPT = dt.timedelta(days=KEPT_DAYS[DELETE_LEAD_TYPE_ID])


def read_deleted_leads(ctx: Context, stream: ActivityStream) -> None:
    """Every Delete Lead activity of [bookmark, end) to its stream; the bookmark moves once
    the read is whole."""
    now = dt.datetime.now(dt.timezone.utc)
    window = Window(stream.start_instant(ctx.settings), ctx.settings.end)
    if window.start < now - DELETED_LEADS_KEPT:
        logger.warning("%s: resuming at %s, but Marketo keeps deleted leads for %d days: "
                       "deletions before %s may be gone.", stream.name, window.lower,
                       DELETED_LEADS_KEPT.days,
                       isoformat(now - DELETED_LEADS_KEPT))
    builder = stream.builder()
    problems = Problems(stream.name)
    record_of = builder.bind_rest(problems)
    rows = ((builder, record_of(item, n))
            for n, item in enumerate(_activities(ctx, window, problems), 1))
    ctx.path.deliver(rows, {builder: stream}, window)
    if problems.counts:
        logger.warning("%s had problems: %s", stream.name, problems.summary())
    if not ctx.dry_run:  # --test reads one record: that covers nothing
        stream.covered(window.start, window.end)
        stream.rest_reads += 1
        ctx.checkpoint()


def _activities(ctx: Context, window: Window, problems: Problems) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    row = 0
    try:
        for page in deleted_leads(ctx.client, window.start):
            sifted = sift(page, (DELETE_LEAD_TYPE_ID,), seen, window.upper)
            row = report_skipped(problems, sifted, row + len(sifted.fresh))
            yield from sifted.fresh
            if sifted.ended:
                return
    except StillOdd as exc:
        raise StillOdd(f"Get Deleted Leads answered oddly, still after {ODD_TRIES} tries: "
                       f"{exc.what}. activities_delete_lead stays at {window.lower} and the "
                       "next run reads it from there; if it persists, report it to Marketo "
                       "support with this line.", exc.what) from None
