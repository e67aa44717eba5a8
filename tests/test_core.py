"""The SDK's standard tap tests, against a sandbox started at import (the SDK discovers
streams while pytest collects)."""

from __future__ import annotations

import atexit

from singer_sdk.testing import get_tap_test_class

from tap_marketo_activities.sandbox import Sandbox
from tap_marketo_activities.tap import TapMarketoActivities

_SANDBOX = Sandbox(job_latency=0.05, data_start="2024-01-01T00:00:00Z",
                   data_end="2024-01-10T00:00:00Z", activities_per_day=40)
_SANDBOX.start()
atexit.register(_SANDBOX.stop)

TestTapMarketoActivities = get_tap_test_class(
    tap_class=TapMarketoActivities,
    config={**_SANDBOX.config, "end_date": "2024-01-10T00:00:00Z", "window_days": 5,
            "poll_interval_seconds": 0.1},
    parse_env_config=False,
)
