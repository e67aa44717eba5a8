"""The roads: each carries its part of the plan (plan.py) through one source of rows into
the one record path (delivery.py), and stops alone, with one line, when its source fails.

- `bulk`: export jobs, one per window for every type that window serves (the scheduler);
- `rest`: Get Lead Activities reads;
- `deleted`: Get Deleted Leads (type 37, which bulk export does not serve).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tap_marketo_activities.client import MarketoClient
from tap_marketo_activities.delivery import RecordPath
from tap_marketo_activities.settings import Settings


@dataclass(frozen=True)
class Context:
    """What every road is handed."""

    settings: Settings
    client: MarketoClient
    path: RecordPath
    checkpoint: Callable[[], None]  # one STATE with everything delivered so far
    dry_run: bool  # --test: no bookmark moves
