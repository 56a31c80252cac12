"""Strategies, privacy, attacks, screening and dropout through whole engine runs (no Prefect).

Every run trains `digits` on a local store under `tmp_path`, one to four rounds of one local
epoch. Where a test checks what a round computed, the expectation is rebuilt outside the engine:
round one's client updates are retrained with the library's training loop, then combined with
numpy or scipy (`np.average`, `np.median`, `scipy.stats.trim_mean`, Krum's scores by hand,
clipping by hand), never with `fl.strategies`, `fl.privacy` or `fl.attacks`. Epsilon is compared
with `fl.privacy.compute_epsilon`, which `test_privacy.py` checks against Opacus itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors
from scipy.stats import trim_mean

from fl.config import RunConfig, load_config
from fl.data import load_federation
from fl.engine import RunSummary, run_training
from fl.errors import RoundError
from fl.models import build_model, initial_weights
from fl.privacy import compute_epsilon
from fl.registry import Registry
from fl.rounds import CHECKPOINT, TrainingState
from fl.sampling import sample_clients
from fl.store import LocalStore
from fl.training import train_cohort
from fl.weights import Weights

# Short runs whose lineage the gate never reverts: every candidate passes the accuracy checks.
FAST = [
    "rounds.per_run=2",
    "train.local_epochs=1",
    "gate.min_accuracy=0.0",
    "gate.max_regression=1.0",
]


def digits(*overrides: str) -> RunConfig:
    return load_config(preset="digits", overrides=[*FAST, *overrides])


def train(store: Path, *overrides: str, **kwargs: Any) -> RunSummary:
    return run_training(digits(*overrides), store_url=str(store), **kwargs)


def registry(store: Path) -> Registry:
    return Registry(LocalStore(store), "default")


def manifests(store: Path) -> list[dict[str, Any]]:
    """Every registered version's manifest, oldest first."""
    return sorted(registry(store).list_versions(limit=100), key=lambda m: m["version"])


def vector(weights: Weights) -> np.ndarray:
    """The tensors as one float64 vector in name order, whatever order the dict holds them in."""
    return np.concatenate([weights[name].double().reshape(-1).numpy() for name in sorted(weights)])


def model_vector(store: Path, version: int) -> np.ndarray:
    weights, _ = registry(store).load(version)
    return vector(weights)


def initial_vector(config: RunConfig) -> np.ndarray:
    fed = load_federation(config.data, config.rounds.seed)
    return vector(initial_weights(config.model, fed.input_dim, fed.num_classes, config.rounds.seed))


def round_one(config: RunConfig) -> tuple[np.ndarray, list[int], np.ndarray, np.ndarray]:
    """Round one recomputed outside the engine: the initial global vector, the sampled client
    ids, their deltas (one float64 row each, in client-id order) and their example counts."""
    seed = config.rounds.seed
    fed = load_federation(config.data, seed)
    start = initial_weights(config.model, fed.input_dim, fed.num_classes, seed)
    sampled = sample_clients(
        fed.num_clients, config.rounds.clients_per_round, seed=seed, server_round=1
    )
    model = build_model(config.model, fed.input_dim, fed.num_classes)
    updates = train_cohort(
        model, start, [fed.client(c) for c in sampled], config.train, seed=seed, server_round=1
    )
    origin = vector(start)
    deltas = np.stack([vector(u.weights) - origin for u in updates])
    counts = np.array([u.num_examples for u in updates], dtype=np.float64)
    return origin, sampled, deltas, counts


def test_round_one_recomputation_matches_the_engine_for_fedavg(tmp_path: Path) -> None:
    """The helper above reproduces what the engine trained (FedAvg streams by tensor name)."""
    train(tmp_path, "rounds.per_run=1")
    origin, _, deltas, counts = round_one(digits())
    expected = origin + np.average(deltas, axis=0, weights=counts)
    np.testing.assert_allclose(model_vector(tmp_path, 1), expected, rtol=0, atol=1e-5)


# ----- resume: server optimizer state goes through the store --------------------------------
SERVER_STATE_KEYS = {
    "fedadam": {"strategy.m", "strategy.v", "strategy.step"},
    "fedavgm": {"strategy.momentum_buffer", "strategy.step"},
}


def checkpointed_server_state(store: Path) -> dict[str, np.ndarray]:
    local = LocalStore(store)
    checkpoint = TrainingState.model_validate_json(local.get(f"models/default/{CHECKPOINT}").data)
    assert checkpoint.server_state_key is not None
    return load_safetensors(local.get(checkpoint.server_state_key).data)


@pytest.mark.parametrize("strategy", sorted(SERVER_STATE_KEYS))
def test_server_state_is_checkpointed_and_resumed(tmp_path: Path, strategy: str) -> None:
    train(tmp_path, f"strategy.name={strategy}")
    state = checkpointed_server_state(tmp_path)
    assert set(state) == SERVER_STATE_KEYS[strategy] and int(state["strategy.step"][0]) == 2
    size = initial_vector(digits()).size
    assert all(array.shape == (size,) for key, array in state.items() if key != "strategy.step")
    second = train(tmp_path, f"strategy.name={strategy}")
    assert second.resumed_from == "checkpoint" and [r.round for r in second.rounds] == [3, 4]
    assert int(checkpointed_server_state(tmp_path)["strategy.step"][0]) == 4


@pytest.mark.parametrize("strategy", sorted(SERVER_STATE_KEYS))
def test_four_rounds_equal_two_plus_two(tmp_path: Path, strategy: str) -> None:
    name = f"strategy.name={strategy}"
    train(tmp_path / "one", name, "rounds.per_run=4")
    for _ in range(2):
        train(tmp_path / "two", name)
    # A control that loses the server state after round two: the comparison must be able to fail.
    train(tmp_path / "lost", name)
    store, key = LocalStore(tmp_path / "lost"), f"models/default/{CHECKPOINT}"
    dropped = TrainingState.model_validate_json(store.get(key).data).model_copy(
        update={"server_state_key": None, "server_state_sha256": None}
    )
    store.put(key, dropped.model_dump_json().encode())
    train(tmp_path / "lost", name)

    one = model_vector(tmp_path / "one", 4)
    np.testing.assert_allclose(model_vector(tmp_path / "two", 4), one, rtol=0, atol=1e-6)
    assert np.max(np.abs(model_vector(tmp_path / "lost", 4) - one)) > 1e-4


# ----- differential privacy -----------------------------------------------------------------
DP = ["privacy.clip_norm=1.0", "privacy.noise_multiplier=1.0"]


def test_dp_epsilon_is_recorded_composes_across_runs_and_gates(tmp_path: Path) -> None:
    config = digits(*DP)
    q = config.rounds.clients_per_round / config.data.num_clients
    delta = config.privacy.delta
    first = train(tmp_path, *DP)
    # Round three may spend exactly its epsilon; round four goes over the budget.
    budget = compute_epsilon(q, 1.0, 3, delta) * (1 + 1e-9)
    second = train(tmp_path, *DP, f"gate.max_epsilon={budget!r}")
    found = manifests(tmp_path)
    assert [m["round"] for m in found] == [1, 2, 3, 4]
    epsilons = []
    for m in found:
        privacy = m["privacy"]
        assert privacy["clip_norm"] == 1.0 and privacy["noise_multiplier"] == 1.0
        assert privacy["delta"] == delta and math.isfinite(privacy["epsilon"])
        expected = compute_epsilon(q, 1.0, m["round"], delta)
        assert privacy["epsilon"] == pytest.approx(expected, rel=1e-9)
        epsilons.append(privacy["epsilon"])
    assert all(a < b for a, b in zip(epsilons, epsilons[1:], strict=False))

    assert first.versions_promoted == [1, 2]
    assert second.versions_promoted == [3] and second.production == 3
    refused = next(c for c in found[3]["gate"]["checks"] if c["check"] == "max_epsilon")
    assert not refused["passed"] and f"epsilon {epsilons[3]:.3f}" in refused["reason"]


def test_dp_candidate_is_the_clipped_sum_over_clients_per_round(tmp_path: Path) -> None:
    origin, _, deltas, _ = round_one(digits())
    norms = np.linalg.norm(deltas, axis=1)
    clip = float(np.median(norms))  # half the clients are clipped, half are not
    train(tmp_path, f"privacy.clip_norm={clip!r}", "privacy.noise_multiplier=0", "rounds.per_run=1")
    clipped = deltas * np.minimum(1.0, clip / norms)[:, None]
    expected = origin + clipped.sum(axis=0) / 8  # fixed denominator: clients_per_round
    np.testing.assert_allclose(model_vector(tmp_path, 1), expected, rtol=0, atol=1e-5)
    assert manifests(tmp_path)[0]["privacy"]["epsilon"] is None  # no noise, no guarantee


# ----- simulated attack ---------------------------------------------------------------------
ATTACK = ["attack.kind=sign_flip", "attack.num_clients=2"]


@pytest.mark.parametrize("allow_attack", [False, True])
def test_sign_flip_attack_is_recorded_and_blocks_promotion(
    tmp_path: Path, allow_attack: bool
) -> None:
    summary = train(tmp_path, *ATTACK, f"gate.allow_attack={str(allow_attack).lower()}")
    for m in manifests(tmp_path):
        assert m["attack"]["kind"] == "sign_flip" and m["attack"]["num_clients"] == 2
        assert m["attack"]["scale"] == 10.0
        attacked = m["clients"]["attacked"]
        assert len(attacked) == 2 and set(attacked) <= set(m["clients"]["contributed"])
        refusal = [r for r in m["gate"]["reasons"] if "simulated sign_flip attack" in r]
        assert m["gate"]["passed"] is allow_attack and bool(refusal) is not allow_attack
    if allow_attack:
        assert summary.versions_promoted == [1, 2]
    else:
        assert summary.versions_promoted == [] and summary.production is None


def test_sign_flip_candidate_is_fedavg_with_the_attackers_deltas_flipped(tmp_path: Path) -> None:
    train(tmp_path, *ATTACK, "rounds.per_run=1")
    attacked = manifests(tmp_path)[0]["clients"]["attacked"]
    origin, sampled, deltas, counts = round_one(digits())
    flip = np.array([-10.0 if client in attacked else 1.0 for client in sampled])
    expected = origin + np.average(deltas * flip[:, None], axis=0, weights=counts)
    np.testing.assert_allclose(model_vector(tmp_path, 1), expected, rtol=0, atol=1e-5)


# ----- screening ----------------------------------------------------------------------------
def norm_between_third_and_fourth_largest(config: RunConfig) -> tuple[float, set[int]]:
    """A max_norm that refuses exactly three of round one's eight updates, and those three."""
    _, sampled, deltas, _ = round_one(config)
    norms = np.linalg.norm(deltas, axis=1)
    ranked = np.sort(norms)
    max_norm = float((ranked[-3] + ranked[-4]) / 2)
    return max_norm, {c for c, n in zip(sampled, norms, strict=True) if n > max_norm}


@pytest.mark.parametrize("strategy", ["fedavg", "median"])  # streamed and in-memory paths
def test_norm_screen_refuses_the_largest_updates_by_name(tmp_path: Path, strategy: str) -> None:
    max_norm, expected = norm_between_third_and_fourth_largest(digits())
    train(tmp_path, f"strategy.name={strategy}", f"screening.max_norm={max_norm!r}")
    clients = manifests(tmp_path)[0]["clients"]
    refused = {int(c): reason for c, reason in clients["refused"].items()}
    assert set(refused) == expected
    assert set(clients["contributed"]) == set(clients["sampled"]) - expected
    for client_id, reason in refused.items():
        assert f"client {client_id}" in reason and "screening.max_norm" in reason


def test_refused_clients_do_not_count_toward_min_fit_clients(tmp_path: Path) -> None:
    max_norm, _ = norm_between_third_and_fourth_largest(digits())  # five of eight pass
    with pytest.raises(RoundError, match=r"only 5 of 8 .* 3 refused.*min_fit_clients is 6"):
        train(tmp_path, f"screening.max_norm={max_norm!r}", "rounds.min_fit_clients=6")


@pytest.mark.parametrize("strategy", ["fedavg", "median"])
def test_round_with_every_client_refused_fails(tmp_path: Path, strategy: str) -> None:
    with pytest.raises(RoundError, match=r"only 0 of 8 .* 8 refused.*min_fit_clients is 2"):
        train(tmp_path, f"strategy.name={strategy}", "screening.max_norm=1e-9")
    assert manifests(tmp_path) == []


# ----- simulated dropout --------------------------------------------------------------------
def test_dropout_is_recorded_survivable_and_deterministic(tmp_path: Path) -> None:
    runs = [train(tmp_path / name, "rounds.dropout_rate=0.5", "rounds.per_run=3") for name in "ab"]
    assert all(run.rounds_completed == 3 for run in runs)
    failed = [[m["clients"]["failed"] for m in manifests(tmp_path / name)] for name in "ab"]
    assert failed[0] == failed[1]
    assert any(failed[0]), "with seed 42, some client drops out three attempts in a row"
    for m in manifests(tmp_path / "a"):
        clients = m["clients"]
        assert all("simulated dropout" in reason for reason in clients["failed"].values())
        assert sorted([*map(int, clients["failed"]), *clients["contributed"]]) == clients["sampled"]
    assert model_vector(tmp_path / "a", 3).tolist() == model_vector(tmp_path / "b", 3).tolist()


def test_dropout_below_min_fit_clients_fails_the_round(tmp_path: Path) -> None:
    with pytest.raises(RoundError, match=r"failed.*min_fit_clients is 8"):
        train(tmp_path, "rounds.dropout_rate=0.5", "rounds.min_fit_clients=8", client_retries=0)


def test_krum_round_with_too_few_updates_fails_instead_of_repeating_the_model(
    tmp_path: Path,
) -> None:
    # Krum with f=2 needs 7 updates; with retries off, about half of the 8 sampled drop out.
    with pytest.raises(RoundError, match="strategy krum needs 7"):
        train(
            tmp_path,
            "strategy.name=krum",
            "strategy.params={f: 2}",
            "rounds.dropout_rate=0.5",
            "rounds.per_run=1",
            client_retries=0,
        )


# ----- FedProx ------------------------------------------------------------------------------
def test_fedprox_records_mu_and_pulls_updates_toward_the_global_model(tmp_path: Path) -> None:
    prox = digits("strategy.name=fedprox", "strategy.params={mu: 1.0}")
    assert prox.strategy.name == "fedprox" and prox.strategy.params == {"mu": 1.0}
    run_training(prox, store_url=str(tmp_path / "prox"))
    train(tmp_path / "avg", "strategy.name=fedavg")
    train(tmp_path / "mu0", "strategy.name=fedprox", "strategy.params={mu: 0.0}")
    recorded = manifests(tmp_path / "prox")[0]["strategy"]
    assert recorded == {"name": "fedprox", "params": {"mu": 1.0, "server_lr": 1.0}}
    origin = initial_vector(prox)
    step_prox = np.linalg.norm(model_vector(tmp_path / "prox", 1) - origin)
    step_avg = np.linalg.norm(model_vector(tmp_path / "avg", 1) - origin)
    assert step_prox < step_avg  # the proximal term shrinks every client's drift
    gap = model_vector(tmp_path / "prox", 2) - model_vector(tmp_path / "avg", 2)
    assert np.max(np.abs(gap)) > 1e-3
    # mu = 0 is FedAvg exactly: the same bytes.
    hashes = [registry(tmp_path / name).manifest(2)["sha256"] for name in ("mu0", "avg")]
    assert hashes[0] == hashes[1]


# ----- robust strategies --------------------------------------------------------------------
ROBUST = [
    ("median", "{}"),
    ("trimmed_mean", "{beta: 0.25}"),
    ("krum", "{f: 2}"),
    ("multikrum", "{f: 2}"),
]


def krum_scores(deltas: np.ndarray, f: int) -> np.ndarray:
    """Blanchard et al.: each row's summed squared distance to its n - f - 2 nearest rows."""
    n = len(deltas)
    scores = []
    for i in range(n):
        distances = sorted(float(np.sum((deltas[i] - deltas[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(distances[: n - f - 2]))
    return np.array(scores)


def expected_robust_delta(strategy: str, deltas: np.ndarray) -> np.ndarray:
    if strategy == "median":
        return np.median(deltas, axis=0)
    if strategy == "trimmed_mean":
        return np.asarray(trim_mean(deltas, 0.25, axis=0))  # drops 2 of 8 on each side
    scores = krum_scores(deltas, f=2)
    if strategy == "krum":
        return deltas[int(np.argmin(scores))]
    return deltas[np.argsort(scores)[: len(deltas) - 2]].mean(axis=0)  # multikrum, m = n - f


@pytest.mark.parametrize(("strategy", "params"), ROBUST)
def test_robust_strategy_runs_end_to_end(tmp_path: Path, strategy: str, params: str) -> None:
    summary = train(tmp_path, f"strategy.name={strategy}", f"strategy.params={params}")
    assert summary.rounds_completed == 2 and summary.versions_registered == [1, 2]
    found = manifests(tmp_path)
    assert all(m["strategy"]["name"] == strategy for m in found)
    assert all(len(m["clients"]["contributed"]) == 8 for m in found)
    assert found[1]["parent_version"] == 1
    assert all(math.isfinite(m["metrics"]["loss"]) for m in found)
    assert not np.array_equal(model_vector(tmp_path, 2), model_vector(tmp_path, 1))


@pytest.mark.parametrize(("strategy", "params"), ROBUST)
def test_robust_strategy_round_one_matches_numpy(
    tmp_path: Path, strategy: str, params: str
) -> None:
    train(tmp_path, f"strategy.name={strategy}", f"strategy.params={params}", "rounds.per_run=1")
    origin, _, deltas, _ = round_one(digits())
    expected = origin + expected_robust_delta(strategy, deltas)
    np.testing.assert_allclose(model_vector(tmp_path, 1), expected, rtol=0, atol=1e-5)
