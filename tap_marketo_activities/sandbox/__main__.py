"""Run the sandbox until SIGTERM/SIGINT: python -m tap_marketo_activities.sandbox."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .core import Sandbox


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tap_marketo_activities.sandbox")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--activities-per-day", type=int, default=48)
    parser.add_argument("--job-latency", type=float, default=0.3)
    parser.add_argument("--data-start", default="2024-01-01T00:00:00Z")
    parser.add_argument("--data-end", default="2024-07-01T00:00:00Z")
    parser.add_argument("--config-out", default=None)
    return parser.parse_args(argv)


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
