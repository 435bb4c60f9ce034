"""Each schedule yields the documented ratios at the documented steps."""

from __future__ import annotations

import pytest

from plprune.errors import PlpruneError
from plprune.schedules import AtInit, Iterative, Linear, OneShot, build_schedule, parse_time


def as_pairs(schedule) -> list[tuple[int, float]]:
    return [(e.step, round(e.ratio, 6)) for e in schedule.events()]


def test_one_shot_and_at_init() -> None:
    schedule = OneShot(500, 0.75)
    assert as_pairs(schedule) == [(500, 0.75)]
    assert schedule.ratio_at(499) == 0.0 and schedule.ratio_at(500) == 0.75
    assert as_pairs(AtInit(0.5)) == [(0, 0.5)]


def test_linear_prunes_the_same_amount_each_interval() -> None:
    schedule = Linear(start=150, end=450, every=100, final_ratio=0.5)
    assert as_pairs(schedule) == [(150, 0.125), (250, 0.25), (350, 0.375), (450, 0.5)]
    assert schedule.ratio_at(300) == 0.25


def test_iterative_is_geometric_in_the_kept_fraction() -> None:
    schedule = Iterative(start=100, every=50, rounds=3, final_ratio=0.875)
    assert as_pairs(schedule) == [(100, 0.5), (150, 0.75), (200, 0.875)]


def test_pruning_after_the_end_is_an_error() -> None:
    with pytest.raises(PlpruneError, match="not before the end of training"):
        OneShot(1000, 0.5).validate(total_steps=1000)
    Linear(0, 900, 100, 0.5).validate(total_steps=1000)


def test_parse_time_and_bad_values() -> None:
    assert parse_time("5e", steps_per_epoch=100) == 500
    assert parse_time("0.5 epochs", steps_per_epoch=100) == 50
    assert parse_time("800", steps_per_epoch=100) == 800
    assert parse_time(800, steps_per_epoch=100) == 800
    with pytest.raises(PlpruneError, match="cannot read time"):
        parse_time("five", 100)
    with pytest.raises(PlpruneError, match=r"\[0, 1\)"):
        OneShot(10, 1.2)
    with pytest.raises(PlpruneError, match="needs an end"):
        build_schedule("linear", 0.5, 10)
    with pytest.raises(PlpruneError, match="unknown schedule"):
        build_schedule("cosine", 0.5, 10)
