"""Run the sandbox until SIGTERM/SIGINT: `tap-marketo-activities-sandbox` or
`python -m tap_marketo_activities.sandbox`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .core import Sandbox

DESCRIPTION = """\
The fake Marketo bundled with tap-marketo-activities: Marketo's REST and Bulk Activity
Extract API (tokens, error codes in HTTP 200 bodies, job states and slots, quotas, Range
downloads, checksums) on 127.0.0.1, with deterministic activities. It prints
"sandbox listening on URL" once it answers and runs until SIGTERM or Ctrl-C.
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
    parser.add_argument("--activities-per-day", type=int, default=48,
                        help="activities generated per day, spread over the activity types "
                             "(default %(default)s)")
    parser.add_argument("--job-latency", type=float, default=0.3,
                        help="seconds an export job spends Processing before it is Completed "
                             "(default %(default)s; a real Marketo job takes minutes)")
    parser.add_argument("--data-start", default="2024-01-01T00:00:00Z",
                        help="the first activity's date, ISO-8601 (default %(default)s)")
    parser.add_argument("--data-end", default="2024-07-01T00:00:00Z",
                        help="activities stop before this date, ISO-8601 (default %(default)s)")
    parser.add_argument("--config-out", default=None, metavar="FILE",
                        help="write a tap config for this sandbox (client_id, client_secret, "
                             "base_url, start_date) to FILE as JSON")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    sandbox = Sandbox(seed=args.seed, data_start=args.data_start, data_end=args.data_end,
                      activities_per_day=args.activities_per_day,
                      job_latency=args.job_latency, port=args.port)
    base_url = sandbox.start()
    try:
        if args.config_out:
            with open(args.config_out, "w", encoding="utf-8") as out:
                json.dump(sandbox.config, out, indent=2)
        print(f"sandbox listening on {base_url}", flush=True)
        while not done.wait(0.5):
            pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
