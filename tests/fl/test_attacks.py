"""Simulated attacks are deterministic, hit the configured number of clients, and nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fl.attacks import apply_attack, attack_record
from fl.config import AttackConfig
from fl.strategies import FlatUpdate


def round_updates(n: int = 8, size: int = 20, seed: int = 0) -> list[FlatUpdate]:
    rng = np.random.default_rng(seed)
    return [FlatUpdate(100 + i, rng.normal(0, 0.1, size).astype(np.float32), 10) for i in range(n)]


def test_no_attack_leaves_updates_alone() -> None:
    updates = round_updates()
    for cfg in (AttackConfig(), AttackConfig(kind="sign_flip", num_clients=0)):
        result, attacked = apply_attack(updates, cfg, seed=1, server_round=1)
        assert attacked == [] and all(a is b for a, b in zip(result, updates, strict=True))
        assert attack_record(cfg) is None


def test_sign_flip_corrupts_exactly_the_chosen_clients() -> None:
    updates = round_updates()
    originals = [u.delta.copy() for u in updates]
    cfg = AttackConfig(kind="sign_flip", num_clients=3, scale=10.0)
    result, attacked = apply_attack(updates, cfg, seed=1, server_round=2)
    assert len(attacked) == 3 and attacked == sorted(attacked)
    for before, after, original in zip(updates, result, originals, strict=True):
        assert after.client_id == before.client_id
        np.testing.assert_array_equal(before.delta, original)  # inputs untouched
        if before.client_id in attacked:
            np.testing.assert_allclose(after.delta, -10.0 * original, rtol=1e-6)
            assert after.delta.dtype == np.float32
        else:
            assert after is before


def test_choice_is_seeded_and_independent_of_arrival_order() -> None:
    updates = round_updates()
    cfg = AttackConfig(kind="sign_flip", num_clients=3)
    _, first = apply_attack(updates, cfg, seed=1, server_round=2)
    _, again = apply_attack(updates[::-1], cfg, seed=1, server_round=2)
    assert first == again
    chosen_over_rounds = {
        tuple(apply_attack(updates, cfg, seed=1, server_round=r)[1]) for r in range(1, 11)
    }
    assert len(chosen_over_rounds) > 1  # a new choice each round


def test_gaussian_noise_scales_with_the_honest_spread() -> None:
    updates = round_updates(n=4, size=20_000)
    cfg = AttackConfig(kind="gaussian", num_clients=2, scale=5.0)
    result, attacked = apply_attack(updates, cfg, seed=3, server_round=1)
    again, _ = apply_attack(updates, cfg, seed=3, server_round=1)
    for before, after, repeat in zip(updates, result, again, strict=True):
        if before.client_id in attacked:
            honest_std = float(np.std(before.delta.astype(np.float64)))
            assert np.std(after.delta) == pytest.approx(5.0 * honest_std, rel=0.03)
            np.testing.assert_array_equal(after.delta, repeat.delta)
    assert len(attacked) == 2


def test_more_attackers_than_updates_attacks_all() -> None:
    updates = round_updates(n=2)
    _, attacked = apply_attack(
        updates, AttackConfig(kind="sign_flip", num_clients=5), seed=0, server_round=1
    )
    assert attacked == [100, 101]


@pytest.mark.parametrize("kind", ["sign_flip", "gaussian"])
def test_attack_record_is_json_safe(kind: str) -> None:
    record = attack_record(AttackConfig(kind=kind, num_clients=2, scale=3.0))  # type: ignore[arg-type]
    assert record is not None
    assert json.loads(json.dumps(record))["kind"] == kind
    assert record["num_clients"] == 2 and record["scale"] == 3.0
