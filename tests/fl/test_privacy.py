"""DP-FedAvg clipping and noise, and epsilon accounting checked against Opacus directly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from opacus.accountants import RDPAccountant
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from fl.errors import AggregationError, ConfigError
from fl.privacy import (
    PrivacyAccountant,
    clip_delta,
    compute_epsilon,
    dp_aggregate,
    privacy_record,
)
from fl.strategies import FlatUpdate


def opacus_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    accountant = RDPAccountant()
    for noise_multiplier, sample_rate, steps in history:
        for _ in range(steps):
            accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return accountant.get_epsilon(delta)


@settings(max_examples=100, deadline=None)
@given(
    delta=arrays(
        st.sampled_from([np.float32, np.float64]),
        st.integers(1, 300),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    clip_norm=st.floats(1e-3, 1e3),
)
def test_clipped_delta_norm_is_at_most_c(delta: np.ndarray, clip_norm: float) -> None:
    clipped = clip_delta(delta, clip_norm)
    norm = np.linalg.norm(delta.astype(np.float64))
    assert clipped.dtype == delta.dtype
    assert np.linalg.norm(clipped.astype(np.float64)) <= clip_norm
    if norm <= clip_norm:
        np.testing.assert_array_equal(clipped, delta)
    else:  # same direction, norm C up to rounding
        expected = delta.astype(np.float64) * (clip_norm / norm)
        np.testing.assert_allclose(clipped, expected, rtol=1e-5, atol=1e-6 * clip_norm)


def test_clip_refuses_non_finite_and_bad_norm() -> None:
    with pytest.raises(AggregationError, match="NaN or Inf"):
        clip_delta(np.array([1.0, np.nan], np.float32), 1.0)
    with pytest.raises(ConfigError, match="clip_norm"):
        clip_delta(np.ones(3, np.float32), 0.0)


def test_noise_std_is_z_times_c() -> None:
    size, clip_norm, noise_multiplier, clients = 200_000, 0.5, 1.3, 4
    updates = [FlatUpdate(i, np.zeros(size, np.float32), 10) for i in range(clients)]
    result = dp_aggregate(updates, clip_norm, noise_multiplier, np.random.default_rng(0))
    noise = result.astype(np.float64) * clients  # undo the fixed denominator
    assert abs(noise.mean()) < 0.01 * noise_multiplier * clip_norm
    assert noise.std() == pytest.approx(noise_multiplier * clip_norm, rel=0.02)


def test_without_noise_dp_aggregate_is_the_unweighted_mean_of_clipped_deltas() -> None:
    rng = np.random.default_rng(1)
    deltas = [rng.normal(0, s, 50).astype(np.float32) for s in (0.01, 1.0, 10.0)]
    updates = [FlatUpdate(i, d, num_examples=10**i) for i, d in enumerate(deltas)]
    clip_norm = 2.0
    expected = np.mean(
        [d * min(1.0, clip_norm / np.linalg.norm(d.astype(np.float64))) for d in deltas], axis=0
    )
    got = dp_aggregate(updates, clip_norm, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    fixed = dp_aggregate(updates, clip_norm, 0.0, np.random.default_rng(0), denominator=6)
    np.testing.assert_allclose(fixed, expected * 3 / 6, rtol=1e-5, atol=1e-7)


def test_dp_aggregate_is_reproducible_from_the_generator() -> None:
    updates = [FlatUpdate(0, np.ones(10, np.float32), 1)]
    first = dp_aggregate(updates, 1.0, 1.0, np.random.default_rng(5))
    second = dp_aggregate(updates, 1.0, 1.0, np.random.default_rng(5))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    ("sample_rate", "noise_multiplier", "steps", "delta"),
    [(0.1, 1.1, 30, 1e-5), (0.8, 0.7, 10, 1e-5), (1.0, 2.0, 5, 1e-3), (0.01, 1.0, 200, 1e-6)],
)
def test_compute_epsilon_equals_opacus(
    sample_rate: float, noise_multiplier: float, steps: int, delta: float
) -> None:
    expected = opacus_epsilon([(noise_multiplier, sample_rate, steps)], delta)
    assert compute_epsilon(sample_rate, noise_multiplier, steps, delta) == pytest.approx(
        expected, rel=1e-12
    )


def test_epsilon_edge_cases() -> None:
    assert compute_epsilon(0.5, 1.0, 0, 1e-5) == 0.0
    assert compute_epsilon(0.5, 0.0, 3, 1e-5) == math.inf
    with pytest.raises(ConfigError, match="delta"):
        compute_epsilon(0.5, 1.0, 3, 0.0)
    with pytest.raises(ConfigError, match="sample rate"):
        compute_epsilon(1.5, 1.0, 3, 1e-5)


def test_accountant_resumes_exactly() -> None:
    straight = PrivacyAccountant(noise_multiplier=1.1, sample_rate=0.2, delta=1e-5)
    for _ in range(10):
        straight.step()

    first = PrivacyAccountant(noise_multiplier=1.1, sample_rate=0.2, delta=1e-5)
    for _ in range(4):
        first.step()
    saved = load_safetensors(save_safetensors(first.state_dict()))
    second = PrivacyAccountant(noise_multiplier=1.1, sample_rate=0.2, delta=1e-5)
    second.load_state_dict(saved)
    for _ in range(6):
        second.step()

    assert second.steps == straight.steps == 10
    epsilon = second.epsilon()
    assert epsilon == straight.epsilon()
    assert epsilon == pytest.approx(opacus_epsilon([(1.1, 0.2, 10)], 1e-5), rel=1e-12)


def test_accountant_resumed_with_other_settings_composes_both() -> None:
    first = PrivacyAccountant(noise_multiplier=1.1, sample_rate=0.2, delta=1e-5)
    for _ in range(3):
        first.step()
    second = PrivacyAccountant(noise_multiplier=0.8, sample_rate=0.3, delta=1e-5)
    second.load_state_dict(first.state_dict())
    for _ in range(2):
        second.step()
    expected = opacus_epsilon([(1.1, 0.2, 3), (0.8, 0.3, 2)], 1e-5)
    assert second.epsilon() == pytest.approx(expected, rel=1e-12)


def test_accountant_refuses_foreign_state_and_starts_fresh_from_empty() -> None:
    accountant = PrivacyAccountant(1.0, 0.1, 1e-5)
    with pytest.raises(ConfigError, match="noise_multipliers"):
        accountant.load_state_dict({"step": np.array([3])})
    accountant.step()
    accountant.load_state_dict({})  # first round of a run: nothing saved yet
    assert accountant.steps == 0 and accountant.epsilon() == 0.0


def test_privacy_record_is_json_safe() -> None:
    accountant = PrivacyAccountant(noise_multiplier=1.0, sample_rate=0.1, delta=1e-5)
    accountant.step()
    record = json.loads(json.dumps(privacy_record(accountant, clip_norm=1.0), allow_nan=False))
    assert record["epsilon"] == pytest.approx(compute_epsilon(0.1, 1.0, 1, 1e-5))
    assert {k: record[k] for k in ("delta", "clip_norm", "noise_multiplier", "sample_rate")} == {
        "delta": 1e-5,
        "clip_norm": 1.0,
        "noise_multiplier": 1.0,
        "sample_rate": 0.1,
    }
    assert record["rounds"] == 1


def test_privacy_record_without_noise_says_epsilon_is_unbounded() -> None:
    accountant = PrivacyAccountant(noise_multiplier=0.0, sample_rate=0.1, delta=1e-5)
    accountant.step()
    assert accountant.epsilon() == math.inf
    record = json.loads(json.dumps(privacy_record(accountant, clip_norm=1.0), allow_nan=False))
    assert record["epsilon"] is None
    assert "infinite" in record["epsilon_note"]
