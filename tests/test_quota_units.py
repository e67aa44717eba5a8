"""quota.py's arithmetic: estimates learnt per type, room under the cap, the plan's words."""

from __future__ import annotations

import datetime as dt

import pytest

from tap_marketo_activities.quota import (
    DAY,
    FILE_OVERHEAD_BYTES,
    MARGIN,
    MB,
    ExportQuota,
    central_midnight,
    size_key,
)

NOW = dt.datetime(2024, 3, 5, 18, 0, tzinfo=dt.timezone.utc)  # noon, US Central (CST)


def test_nothing_learnt_estimates_nothing() -> None:
    quota = ExportQuota(400 * MB)
    assert quota.estimate(["1"], DAY) is None
    assert quota.seconds_that_fit(["1"]) == float("inf")


def test_an_estimate_is_the_learnt_rate_over_the_window_plus_a_header() -> None:
    quota = ExportQuota(400 * MB)
    quota.learn({"1": 10 * MB}, 2 * DAY)  # 5 MB a day
    assert quota.estimate(["1"], DAY) == pytest.approx(5 * MB + FILE_OVERHEAD_BYTES)
    assert quota.estimate(["1"], 3 * DAY) == pytest.approx(15 * MB + FILE_OVERHEAD_BYTES)


def test_a_type_not_seen_yet_costs_the_average_of_those_seen() -> None:
    quota = ExportQuota(400 * MB)
    quota.learn({"1": 2 * MB, "2": 4 * MB}, DAY)
    assert quota.bytes_per_day(["3"]) == pytest.approx(3 * MB)
    assert quota.bytes_per_day(["1", "3"]) == pytest.approx(5 * MB)


def test_learning_weighs_old_days_and_new_days_alike() -> None:
    quota = ExportQuota(400 * MB)
    quota.learn({"1": 1 * MB}, DAY)
    quota.learn({"1": 3 * MB}, DAY)
    assert quota.bytes_per_day(["1"]) == pytest.approx(2 * MB)


def test_learnt_rates_survive_the_state() -> None:
    quota = ExportQuota(400 * MB)
    quota.learn({"1": 10 * MB}, 2 * DAY)
    saved = quota.saved_rates()
    assert all(isinstance(n, int) for pair in saved.values() for n in pair)
    again = ExportQuota(400 * MB, rates=saved)
    assert again.bytes_per_day(["1"]) == pytest.approx(5 * MB, abs=1)


def test_narrow_exports_are_learnt_apart() -> None:
    assert size_key(7, ["marketoGUID", "attributes"]) == "7"
    assert size_key(7, ["marketoGUID"]) == "7:narrow"


def test_a_window_fits_when_its_reservation_does() -> None:
    quota = ExportQuota(100 * MB, used_bytes=40 * MB)
    estimate = 60 * MB / MARGIN * 0.99  # the margin and the spread of the row count
    assert quota.reservation(estimate) > estimate * MARGIN
    assert quota.fits(estimate) == (quota.reservation(estimate) <= 60 * MB)
    assert not quota.fits(60 * MB / MARGIN)


def test_seconds_that_fit_is_the_room_at_the_learnt_rate() -> None:
    quota = ExportQuota(100 * MB, used_bytes=40 * MB)
    quota.learn({"1": 12 * MB}, DAY)
    seconds = quota.seconds_that_fit(["1"])
    assert quota.reservation(quota.estimate(["1"], seconds) or 0) == pytest.approx(60 * MB)
    assert quota.fits(quota.estimate(["1"], seconds * 0.999) or 0)
    assert not quota.fits(quota.estimate(["1"], seconds * 1.01) or 0)


def test_reserving_takes_room_and_settling_gives_back_all_but_the_real_size() -> None:
    quota = ExportQuota(100 * MB)
    held = quota.reserve(10 * MB)
    assert held == pytest.approx(quota.reservation(10 * MB))
    assert quota.room() == pytest.approx(100 * MB - held)
    assert quota.running == 1
    quota.settle(held, 3 * MB)
    assert quota.room() == pytest.approx(97 * MB)
    assert (quota.running, quota.used_bytes, quota.used_by_run) == (0, 3 * MB, 3 * MB)


def test_a_job_that_counted_nothing_today_settles_at_nothing() -> None:
    quota = ExportQuota(100 * MB)
    quota.settle(quota.reserve(None), None)
    assert (quota.room(), quota.used_by_run, quota.running) == (100 * MB, 0, 0)


def test_the_plan_counts_daily_runs_at_the_cap() -> None:
    quota = ExportQuota(100 * MB, used_bytes=50 * MB)
    assert "1 daily run (today's included)" in quota.plan_line(40 * MB, 2, NOW)
    # 50 MB today, then 100 MB a day: 250 MB is today and two more days.
    line = quota.plan_line(250 * MB, 1, NOW)
    assert "3 daily runs" in line
    assert f"{central_midnight(NOW) + dt.timedelta(days=2):%Y-%m-%d}" in line
    assert "for 1 stream;" in line


def test_the_plan_without_room_today_starts_tomorrow() -> None:
    quota = ExportQuota(100 * MB, used_bytes=100 * MB)
    assert "2 more daily runs, from tomorrow" in quota.plan_line(150 * MB, 3, NOW)


def test_cap_reached_names_the_setting_and_the_reset() -> None:
    line = ExportQuota(100 * MB, used_bytes=100 * MB).cap_reached(NOW)
    assert "max_export_mb_per_day=100 MB" in line
    assert "100.00 MB" in line
    assert "resets at 2024-03-06 06:00 UTC (2024-03-06 00:00 US Central)" in line


def test_the_quota_day_starts_at_midnight_us_central() -> None:
    midnight = central_midnight(NOW)
    assert midnight.astimezone(dt.timezone.utc) == dt.datetime(2024, 3, 5, 6, 0,
                                                               tzinfo=dt.timezone.utc)
