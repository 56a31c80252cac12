"""The plain aggregation functions: robustness on constructed attacks, and laws that must hold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fl.config import STRATEGIES, StrategyConfig
from fl.strategies import FlatUpdate, build_strategy
from fl.strategies.aggregate import (
    coordinate_median,
    krum,
    krum_scores,
    multikrum,
    multikrum_selection,
    trimmed_mean,
    weighted_mean,
)

HONEST_CENTRE = np.array([1.0, -2.0, 0.5, 3.0])


def honest_and_attackers(honest: int = 5, attackers: int = 2) -> np.ndarray:
    rng = np.random.default_rng(7)
    good = HONEST_CENTRE + rng.normal(0, 0.05, (honest, 4))
    bad = np.array([[100.0, 100.0, -100.0, 100.0], [-80.0, 90.0, 70.0, -60.0]])[:attackers]
    return np.vstack([bad[:1], good, bad[1:]])  # attackers first and last: position is no hint


def test_krum_picks_an_honest_update() -> None:
    deltas = honest_and_attackers()
    chosen = krum(deltas, f=2)
    honest_rows = deltas[1:-1]
    assert any(np.array_equal(chosen, row) for row in honest_rows)
    scores = krum_scores(deltas, f=2)
    assert scores[0] > scores[1:-1].max() and scores[-1] > scores[1:-1].max()


def test_multikrum_averages_only_honest_updates() -> None:
    deltas = honest_and_attackers()
    selected = multikrum_selection(deltas, f=2, m=5)
    assert sorted(selected.tolist()) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(multikrum(deltas, f=2, m=5), deltas[1:-1].mean(axis=0))


def test_krum_strategy_returns_honest_delta_unchanged() -> None:
    deltas = honest_and_attackers().astype(np.float32)
    updates = [FlatUpdate(i, row, 10) for i, row in enumerate(deltas)]
    strategy = build_strategy(StrategyConfig(name="krum", params={"f": 2}))
    chosen = strategy.aggregate_deltas(1, updates)
    assert any(np.array_equal(chosen, row) for row in deltas[1:-1])
    multi = build_strategy(StrategyConfig(name="multikrum", params={"f": 2}))  # m = n - f = 5
    np.testing.assert_allclose(
        multi.aggregate_deltas(1, updates), deltas[1:-1].astype(np.float64).mean(axis=0), rtol=1e-6
    )


def test_median_and_trimmed_mean_ignore_one_huge_outlier() -> None:
    rng = np.random.default_rng(3)
    honest = HONEST_CENTRE + rng.normal(0, 0.1, (5, 4))
    deltas = np.vstack([honest, np.full((1, 4), 1e9)])
    low, high = honest.min(axis=0), honest.max(axis=0)
    median = coordinate_median(deltas)
    assert np.all((low <= median) & (median <= high))
    trimmed = trimmed_mean(deltas, beta=0.2)  # n = 6: drops 1 smallest and 1 largest
    assert np.all((low <= trimmed) & (trimmed <= high))
    assert np.abs(weighted_mean(deltas, np.ones(6))).max() > 1e8  # the mean is not robust


def test_trimmed_mean_drops_floor_beta_n_per_side() -> None:
    column = np.array([[5.0], [1.0], [100.0], [2.0], [-50.0], [3.0], [4.0]])
    assert trimmed_mean(column, beta=0.2)[0] == pytest.approx(np.mean([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert trimmed_mean(column, beta=0.3)[0] == pytest.approx(np.mean([2.0, 3.0, 4.0]))


def test_weighted_mean_matches_numpy_average() -> None:
    rng = np.random.default_rng(4)
    deltas, weights = rng.normal(size=(6, 9)), rng.integers(1, 50, 6)
    np.testing.assert_allclose(
        weighted_mean(deltas, weights), np.average(deltas, axis=0, weights=weights)
    )


matrices = st.integers(1, 8).flatmap(
    lambda n: arrays(
        np.float64,
        st.tuples(st.just(n), st.integers(1, 6)),
        elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    )
)


@settings(max_examples=60, deadline=None)
@given(deltas=matrices)
def test_trimmed_mean_with_beta_zero_is_the_mean(deltas: np.ndarray) -> None:
    np.testing.assert_allclose(trimmed_mean(deltas, beta=0.0), deltas.mean(axis=0), atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(deltas=matrices, beta=st.floats(0.0, 0.49))
def test_trimmed_mean_lies_between_median_bounds(deltas: np.ndarray, beta: float) -> None:
    result = trimmed_mean(deltas, beta)
    assert np.all(result >= deltas.min(axis=0) - 1e-9)
    assert np.all(result <= deltas.max(axis=0) + 1e-9)


@settings(max_examples=40, deadline=None)
@given(
    row=arrays(np.float32, st.integers(1, 8), elements=st.floats(-100, 100, width=32)),
    n=st.integers(5, 8),
    name=st.sampled_from(STRATEGIES),
)
def test_identical_updates_aggregate_to_that_update(row: np.ndarray, n: int, name: str) -> None:
    updates = [FlatUpdate(i, row.copy(), i + 1) for i in range(n)]
    strategy = build_strategy(StrategyConfig(name=name))
    np.testing.assert_allclose(strategy.aggregate_deltas(1, updates), row, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    name=st.sampled_from(["fedavg", "median", "trimmed_mean", "multikrum"]),
)
def test_client_order_does_not_matter(seed: int, name: str) -> None:
    rng = np.random.default_rng(seed)
    updates = [
        FlatUpdate(i, rng.normal(size=5).astype(np.float32), int(rng.integers(1, 9)))
        for i in range(7)
    ]
    strategy = build_strategy(StrategyConfig(name=name))
    forward = strategy.aggregate_deltas(1, updates)
    backward = strategy.aggregate_deltas(1, updates[::-1])
    np.testing.assert_allclose(forward, backward, rtol=1e-5, atol=1e-6)
