"""Get Deleted Leads: type 37's rows, from the stream's bookmark to the end, as one window
through the one record path."""

from __future__ import annotations

import datetime as dt
import itertools
import logging

from tap_marketo_activities.delivery import Window
from tap_marketo_activities.instants import isoformat
from tap_marketo_activities.records import Problems
from tap_marketo_activities.rest import deleted_leads
from tap_marketo_activities.retention import DELETE_LEAD, KEPT_DAYS
from tap_marketo_activities.roads import Context
from tap_marketo_activities.schema import REPLICATION_KEY
from tap_marketo_activities.streams import ActivityStream

logger = logging.getLogger(__name__)

DELETED_LEADS_KEPT = dt.timedelta(days=KEPT_DAYS[DELETE_LEAD])


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
    items = itertools.takewhile(lambda item: str(item.get(REPLICATION_KEY)) < window.upper,
                                deleted_leads(ctx.client, window.start))
    rows = ((builder, record_of(item, n)) for n, item in enumerate(items, 1))
    ctx.path.deliver(rows, {builder: stream}, window)
    if problems.counts:
        logger.warning("%s had problems: %s", stream.name, problems.summary())
    if not ctx.dry_run:  # --test reads one record: that covers nothing
        stream.covered(window.start, window.end)
        stream.rest_reads += 1
        ctx.checkpoint()
