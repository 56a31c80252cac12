"""Each screen refuses what it should, with a reason naming the client, and keeps the rest."""

from __future__ import annotations

import numpy as np
import pytest

from fl.config import ScreeningConfig
from fl.errors import ConfigError
from fl.screening import (
    FiniteScreen,
    NormBoundScreen,
    Refusal,
    RelativeNormScreen,
    ShapeScreen,
    screen_updates,
)
from fl.strategies import FlatUpdate

SIZE = 8


def update(client_id: int, delta: np.ndarray | list[float]) -> FlatUpdate:
    return FlatUpdate(client_id, np.asarray(delta, dtype=np.float32), num_examples=10)


def honest(client_id: int, norm: float = 1.0) -> FlatUpdate:
    return update(client_id, np.full(SIZE, norm / np.sqrt(SIZE)))


def refused_ids(refusals: list[Refusal]) -> list[int]:
    return [r.client_id for r in refusals]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    delta = np.ones(SIZE, np.float32)
    delta[3] = bad
    accepted, refusals = FiniteScreen()([honest(1), update(7, delta)])
    assert [u.client_id for u in accepted] == [1]
    assert refusals == [Refusal(7, refusals[0].reason)]
    assert "client 7" in refusals[0].reason and "non-finite" in refusals[0].reason


@pytest.mark.parametrize(
    ("delta", "fragment"),
    [
        (np.ones(SIZE + 1, np.float32), "shape (9,)"),
        (np.ones((2, 4), np.float32), "shape (2, 4)"),
        (np.ones(SIZE, np.int64), "dtype int64"),
        ([1.0] * SIZE, "not a numpy array"),
    ],
)
def test_wrong_shape_or_dtype_is_refused(delta: object, fragment: str) -> None:
    bad = FlatUpdate(4, delta, 10)  # type: ignore[arg-type]
    accepted, refusals = ShapeScreen(SIZE)([honest(1), bad])
    assert [u.client_id for u in accepted] == [1]
    assert refused_ids(refusals) == [4]
    assert "client 4" in refusals[0].reason and fragment in refusals[0].reason


def test_required_dtype_is_enforced_when_given() -> None:
    delta64 = FlatUpdate(2, np.ones(SIZE, np.float64), 1)
    assert ShapeScreen(SIZE)([delta64])[1] == []
    refusals = ShapeScreen(SIZE, np.float32)([delta64])[1]
    assert "client 2" in refusals[0].reason and "float32" in refusals[0].reason


def test_absolute_norm_bound() -> None:
    accepted, refusals = NormBoundScreen(2.0)([honest(1, 1.9), honest(2, 2.5)])
    assert [u.client_id for u in accepted] == [1]
    assert refused_ids(refusals) == [2]
    assert "client 2" in refusals[0].reason and "max_norm" in refusals[0].reason


def test_norm_relative_to_round_median() -> None:
    updates = [honest(i, 1.0 + 0.1 * i) for i in range(5)] + [honest(9, 10.0)]
    accepted, refusals = RelativeNormScreen(3.0)(updates)
    assert [u.client_id for u in accepted] == [0, 1, 2, 3, 4]
    assert refused_ids(refusals) == [9]
    assert "client 9" in refusals[0].reason and "median" in refusals[0].reason


def test_relative_factor_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_norm_factor"):
        RelativeNormScreen(0.5)


def test_screen_updates_composes_all_screens_in_order() -> None:
    nan = np.ones(SIZE, np.float32)
    nan[0] = np.nan
    updates = [
        honest(1),
        update(2, nan),
        update(3, np.ones(SIZE - 1)),
        honest(4, 1.2),
        honest(5, 50.0),  # over the absolute bound
        honest(6, 4.0),  # under it, but over 3 x the median
        honest(7, 0.9),
    ]
    cfg = ScreeningConfig(max_norm=10.0, max_norm_factor=3.0)
    accepted, refusals = screen_updates(updates, cfg, expected_size=SIZE)
    assert [u.client_id for u in accepted] == [1, 4, 7]
    assert refused_ids(refusals) == [3, 2, 5, 6]
    for refusal in refusals:
        assert f"client {refusal.client_id}" in refusal.reason
    assert all(a is b for a, b in zip(accepted, [updates[0], updates[3], updates[6]], strict=True))


def test_without_norm_settings_only_shape_and_finiteness_are_checked() -> None:
    updates = [honest(1), honest(2, 1e6)]
    accepted, refusals = screen_updates(updates, ScreeningConfig(), expected_size=SIZE)
    assert len(accepted) == 2 and refusals == []
