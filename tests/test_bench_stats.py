"""Paired-ratio statistics of the report: hand-computed t intervals, a numpy bootstrap reference, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plprune.bench.stats import paired_ratio, t_quantile, verdict
from plprune.errors import PlpruneError


def test_t_quantiles_match_the_printed_table() -> None:
    # Student-t 97.5% points (any statistics table): df 1, 2, 4, 10
    for df, value in ((1, 12.706204736), (2, 4.302652730), (4, 2.776445105), (10, 2.228138852)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-8)


def test_paired_t_interval_by_hand() -> None:
    # ratios 2, 2, 4 -> d = ln2 * (1, 1, 2): mean 4/3 ln2, sd = ln2 / sqrt(3), n = 3
    result = paired_ratio([2.0, 4.0, 8.0], [1.0, 2.0, 2.0])
    ln2 = math.log(2)
    half = 4.302652730 * (ln2 / math.sqrt(3)) / math.sqrt(3)
    assert result.n == 3
    assert result.ratio == pytest.approx(2 ** (4 / 3))
    assert result.low == pytest.approx(math.exp(4 / 3 * ln2 - half))
    assert result.high == pytest.approx(math.exp(4 / 3 * ln2 + half))
    assert result.per_seed == pytest.approx((2.0, 2.0, 4.0))


def test_bootstrap_matches_a_plain_loop_reference() -> None:
    a, b = [10.0, 12.0, 9.0, 11.0, 13.0], [11.0, 12.5, 9.5, 10.0, 14.0]
    result = paired_ratio(a, b, resamples=2000, seed=7)
    d = np.log(np.array(a) / np.array(b))
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 5, size=(2000, 5))
    means = np.array([d[row].mean() for row in idx])
    assert result.boot_low == pytest.approx(math.exp(np.quantile(means, 0.025)))
    assert result.boot_high == pytest.approx(math.exp(np.quantile(means, 0.975)))
    assert result.boot_low <= result.ratio <= result.boot_high


def test_verdicts_follow_the_interval() -> None:
    better = paired_ratio([90.0, 91.0, 89.0, 90.5, 90.2], [100.0, 100.5, 99.0, 100.2, 101.0])
    assert better.excludes_one()
    assert verdict(better, "pl", "random", higher_is_better=False) == "pl beats random"
    assert verdict(better, "pl", "random", higher_is_better=True) == "random beats pl"
    noisy = paired_ratio([90.0, 110.0, 95.0, 105.0, 100.0], [100.0, 100.0, 100.0, 100.0, 100.0])
    assert not noisy.excludes_one()
    assert verdict(noisy, "pl", "random", higher_is_better=False) == "no difference detected"


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([1.0], [1.0], "at least 2 seeds"),
        ([1.0, 2.0], [1.0], "same number"),
        ([1.0, -1.0], [1.0, 1.0], "positive"),
    ],
)
def test_invalid_input_is_a_clear_error(a, b, message) -> None:
    with pytest.raises(PlpruneError, match=message):
        paired_ratio(a, b)
