"""Gains over traces and their bootstrap confidence intervals."""

from __future__ import annotations

import pytest

from gpuos.agents.stats import Gain, bootstrap_gain


def test_the_gain_is_the_geometric_mean_of_the_ratios_minus_one() -> None:
    assert bootstrap_gain([1.21, 1.0]).mean == pytest.approx(0.1)
    assert bootstrap_gain([0.5, 2.0]).mean == pytest.approx(0.0)


def test_equal_ratios_give_an_interval_of_zero_width() -> None:
    gain = bootstrap_gain([1.05] * 6)
    assert (
        gain.low == pytest.approx(0.05)
        and gain.high == pytest.approx(0.05)
        and gain.mean == pytest.approx(0.05)
    )
    assert gain.holds


def test_wins_and_losses_give_an_interval_that_crosses_zero() -> None:
    gain = bootstrap_gain([1.3, 0.8, 1.1, 0.9, 1.2, 0.85])
    assert gain.low < 0 < gain.high
    assert not gain.holds


def test_one_big_win_among_ties_does_not_hold() -> None:
    # The shape of the old +8.5%: +63% on one window, about nothing on five.
    gain = bootstrap_gain([1.63, 1.001, 0.999, 1.0, 1.001, 0.999])
    assert gain.mean > 0.08
    assert gain.low == pytest.approx(0.0, abs=0.005)
    assert not gain.holds


def test_consistent_wins_hold() -> None:
    gain = bootstrap_gain([1.08, 1.12, 1.05, 1.10, 1.07, 1.09])
    assert gain.holds and gain.low < gain.mean < gain.high


def test_the_interval_is_the_same_for_the_same_seed() -> None:
    ratios = [1.3, 0.8, 1.1, 0.9, 1.2]
    assert bootstrap_gain(ratios, seed=3) == bootstrap_gain(ratios, seed=3)
    assert bootstrap_gain(ratios, seed=3, resamples=500) != bootstrap_gain(ratios, seed=4, resamples=500)


def test_a_wider_level_gives_a_wider_interval() -> None:
    ratios = [1.3, 0.8, 1.1, 0.9, 1.2]
    narrow, wide = bootstrap_gain(ratios, level=0.5), bootstrap_gain(ratios, level=0.99)
    assert wide.low < narrow.low and narrow.high < wide.high


def test_a_gain_formats_as_percent_with_its_interval() -> None:
    assert Gain(0.041, 0.008, 0.075).format() == "+4.1% [+0.8%, +7.5%]"
    assert Gain(-0.02, -0.05, 0.01).format() == "-2.0% [-5.0%, +1.0%]"


@pytest.mark.parametrize("ratios", [[], [1.0, 0.0], [1.0, -2.0], [float("nan")], [float("inf")]])
def test_ratios_that_are_not_positive_numbers_are_refused(ratios: list[float]) -> None:
    with pytest.raises(ValueError):
        bootstrap_gain(ratios)


def test_a_level_outside_zero_and_one_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        bootstrap_gain([1.1], level=1.0)
