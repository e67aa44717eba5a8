"""The tap's own state beside the SDK's bookmarks: one codec for what the SDK hands over
and what every STATE carries.

The SDK reads `--state` with numbers as `Decimal` and keeps only `bookmarks`; our keys are
taken here, turned into plain JSON values once, and written back with every STATE.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

EXPORTS_STATE_KEY = "marketo_exports"  # our jobs still in Marketo, to re-use after a crash
SIZES_STATE_KEY = "marketo_export_sizes"  # bytes per day per type, learnt from exports
REST_STATE_KEY = "marketo_rest"  # the REST budget's day, its calls and the learnt cost
# marketoGUIDs delivered that a lookback can return again (delivered.py):
# {tag: {"ids": base64 text, "other": [guid, ...]}}
MEMORY_STATE_KEY = "marketo_delivered"
OUR_KEYS = (EXPORTS_STATE_KEY, SIZES_STATE_KEY, REST_STATE_KEY, MEMORY_STATE_KEY)


def plain(value: Any) -> Any:
    """A JSON value with every Decimal turned into an int (when whole) or a float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def our_part(state: Mapping[str, Any]) -> dict[str, Any]:
    """Our keys of a state as the SDK or a user handed it, in plain JSON values."""
    return {key: plain(state[key]) for key in OUR_KEYS if state.get(key) is not None}
