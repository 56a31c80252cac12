"""Every strategy against an independent reference, its server state, and its configuration."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from fl.config import STRATEGIES, StrategyConfig
from fl.errors import AggregationError, ConfigError
from fl.strategies import FlatUpdate, Strategy, build_strategy
from tests.fl.strategies.reference import DEFAULTS, reference_aggregate, reference_apply

DIM = 24
CLIENTS = 7  # Krum with f = 1 needs n > 2f + 2

# Non-default settings too, so a parameter that is read but ignored would show.
SETTINGS: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in STRATEGIES] + [
    ("fedavgm", {"server_lr": 0.5, "momentum": 0.5}),
    ("fedadam", {"server_lr": 0.1, "beta1": 0.5, "beta2": 0.9, "tau": 1e-2}),
    ("fedyogi", {"server_lr": 0.1, "beta1": 0.0, "beta2": 0.5, "tau": 1e-9}),
    ("fedadagrad", {"server_lr": 0.3, "beta1": 0.0, "tau": 0.1}),
    ("trimmed_mean", {"beta": 0.3}),
    ("krum", {"f": 2, "server_lr": 0.5}),
    ("multikrum", {"f": 2, "m": 2}),
]


def make_round(rng: np.random.Generator, server_round: int) -> list[FlatUpdate]:
    return [
        FlatUpdate(
            client_id=10 * server_round + i,
            delta=rng.normal(0.1 * server_round, 1.0, DIM).astype(np.float32),
            num_examples=int(rng.integers(1, 100)),
        )
        for i in range(CLIENTS)
    ]


def as_matrix(updates: list[FlatUpdate]) -> tuple[np.ndarray, np.ndarray]:
    deltas = np.array([u.delta for u in updates], dtype=np.float64)
    return deltas, np.array([u.num_examples for u in updates], dtype=np.float64)


@pytest.mark.parametrize(("name", "params"), SETTINGS, ids=lambda v: str(v))
def test_strategy_matches_reference_over_rounds(name: str, params: dict[str, Any]) -> None:
    rng = np.random.default_rng(0)
    strategy = build_strategy(StrategyConfig(name=name, params=params))
    expected_params = {**DEFAULTS[name], **params}
    state: dict[str, np.ndarray] = {}
    x_code = rng.normal(0, 1, DIM).astype(np.float32)
    x_ref = x_code.astype(np.float64)
    for server_round in range(1, 5):
        updates = make_round(rng, server_round)
        deltas, weights = as_matrix(updates)
        expected_delta = reference_aggregate(name, expected_params, deltas, weights)
        got_delta = strategy.aggregate_deltas(server_round, updates)
        assert got_delta.dtype == np.float32
        np.testing.assert_allclose(got_delta, expected_delta, rtol=1e-5, atol=1e-6)

        x_ref = reference_apply(name, expected_params, state, x_ref, expected_delta)
        x_code = strategy.aggregate_train(server_round, x_code, updates)
        assert x_code.dtype == np.float32
        np.testing.assert_allclose(x_code, x_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", STRATEGIES)
def test_describe_is_json_safe_and_complete(name: str) -> None:
    strategy = build_strategy(StrategyConfig(name=name))
    description = strategy.describe()
    assert json.loads(json.dumps(description)) == {"name": name, "params": DEFAULTS[name]}


@pytest.mark.parametrize("name", STRATEGIES)
def test_robust_flag(name: str) -> None:
    expected = name in ("median", "trimmed_mean", "krum", "multikrum")
    assert build_strategy(StrategyConfig(name=name)).robust is expected


def test_fedprox_sends_proximal_mu_and_others_send_nothing() -> None:
    for name in STRATEGIES:
        strategy = build_strategy(StrategyConfig(name=name, params={}))
        expected = {"proximal_mu": 0.01} if name == "fedprox" else {}
        assert strategy.configure_train(1) == expected
    custom = build_strategy(StrategyConfig(name="fedprox", params={"mu": 0.5}))
    assert custom.configure_train(3) == {"proximal_mu": 0.5}


def roundtrip(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The lead stores state as safetensors with the checkpoint; go through the same bytes."""
    return load_safetensors(save_safetensors(state)) if state else {}


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_state_dict_resume_equals_uninterrupted(name: str) -> None:
    rng = np.random.default_rng(1)
    rounds = [make_round(rng, r) for r in range(1, 5)]
    start = rng.normal(0, 1, DIM).astype(np.float32)

    straight = build_strategy(StrategyConfig(name=name))
    x_straight = start
    for server_round, updates in enumerate(rounds, start=1):
        x_straight = straight.aggregate_train(server_round, x_straight, updates)

    first = build_strategy(StrategyConfig(name=name))
    x_resumed = start
    for server_round, updates in enumerate(rounds[:2], start=1):
        x_resumed = first.aggregate_train(server_round, x_resumed, updates)
    saved = roundtrip(first.state_dict())
    assert all(isinstance(v, np.ndarray) for v in saved.values())
    second = build_strategy(StrategyConfig(name=name))
    second.load_state_dict(saved)
    for server_round, updates in enumerate(rounds[2:], start=3):
        x_resumed = second.aggregate_train(server_round, x_resumed, updates)

    np.testing.assert_allclose(x_resumed, x_straight, rtol=0, atol=1e-6)
    assert int(second.state_dict()["step"][0]) == 4
    for key, value in straight.state_dict().items():
        np.testing.assert_allclose(second.state_dict()[key], value, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", STRATEGIES)
def test_fresh_and_empty_state_load(name: str) -> None:
    strategy = build_strategy(StrategyConfig(name=name))
    strategy.load_state_dict(roundtrip(strategy.state_dict()))
    strategy.apply(1, np.zeros(3, np.float32), np.ones(3, np.float32))
    strategy.load_state_dict({})  # no state saved yet: starts fresh
    assert {k: v.tolist() for k, v in strategy.state_dict().items()} in ({}, {"step": [0]})


def test_state_of_another_strategy_is_refused() -> None:
    adam = build_strategy(StrategyConfig(name="fedadam"))
    adam.apply(1, np.zeros(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ConfigError, match="fedavgm expects"):
        build_strategy(StrategyConfig(name="fedavgm")).load_state_dict(adam.state_dict())
    with pytest.raises(ConfigError, match="fedavg expects no keys"):
        build_strategy(StrategyConfig(name="fedavg")).load_state_dict(adam.state_dict())


def test_state_of_another_model_size_is_refused_at_apply() -> None:
    adam = build_strategy(StrategyConfig(name="fedadam"))
    adam.apply(1, np.zeros(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(AggregationError, match="shape"):
        adam.apply(2, np.zeros(4, np.float32), np.ones(4, np.float32))


@pytest.mark.parametrize(
    ("name", "params", "fragments"),
    [
        ("trimmed_mean", {"beta": 0.6}, ["beta", "[0, 0.5)", "0.6"]),
        ("trimmed_mean", {"beta": -0.1}, ["beta", "[0, 0.5)"]),
        ("fedadam", {"tau": -1e-3}, ["tau", "> 0", "-0.001"]),
        ("fedyogi", {"tau": 0}, ["tau", "> 0"]),
        ("fedadam", {"beta2": 1.0}, ["beta2", "[0, 1)"]),
        ("fedadam", {"server_lr": float("nan")}, ["server_lr", "> 0"]),
        ("fedavgm", {"momentum": 1.0}, ["momentum", "[0, 1)"]),
        ("fedprox", {"mu": -1}, ["mu", ">= 0"]),
        ("fedavg", {"server_lr": "fast"}, ["server_lr", "'fast'"]),
        ("krum", {"f": -1}, ["f", "integer >= 0"]),
        ("krum", {"f": 1.5}, ["f", "integer >= 0", "1.5"]),
        ("krum", {"f": True}, ["f", "integer >= 0"]),
        ("multikrum", {"m": 0}, ["m", "integer >= 1"]),
        ("fedadagrad", {"beta2": 0.9}, ["beta2", "not a parameter of fedadagrad", "tau"]),
        ("fedavg", {"momentum": 0.9}, ["momentum", "not a parameter of fedavg", "server_lr"]),
        ("median", {"beta": 0.1}, ["beta", "not a parameter of median"]),
    ],
)
def test_invalid_params_raise_config_error(
    name: str, params: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        build_strategy(StrategyConfig(name=name, params=params))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unknown_strategy_name_raises_config_error() -> None:
    cfg = StrategyConfig.model_construct(name="fedsgd", params={})  # bypass pydantic's check
    with pytest.raises(ConfigError, match="'fedsgd'.*fedavg"):
        build_strategy(cfg)


@pytest.mark.parametrize(
    ("name", "params", "clients", "fragments"),
    [
        ("krum", {"f": 3}, 8, ["f=3", "clients_per_round=8", "[0, 2]"]),
        ("multikrum", {"f": 1, "m": 8}, 8, ["m=8", "[1, 7]"]),
        ("krum", {}, 2, ["at least 3"]),
    ],
)
def test_round_size_checked_at_build_time(
    name: str, params: dict[str, Any], clients: int, fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        build_strategy(StrategyConfig(name=name, params=params), clients_per_round=clients)
    for fragment in fragments:
        assert fragment in str(info.value)
    largest_ok = {"f": 2} if name == "krum" else {"f": 1, "m": 7}
    build_strategy(StrategyConfig(name=name, params=largest_ok), clients_per_round=max(clients, 7))


@pytest.mark.parametrize(
    ("name", "params", "n", "match"),
    [
        ("krum", {"f": 1}, 4, "at least 5 client updates"),
        ("multikrum", {"f": 1, "m": 5}, 5, r"m in \[1, n - f\] = \[1, 4\]"),
        ("fedavg", {}, 0, "no client updates"),
    ],
)
def test_too_few_updates_raise_aggregation_error(
    name: str, params: dict[str, Any], n: int, match: str
) -> None:
    updates = [FlatUpdate(i, np.ones(3, np.float32), 1) for i in range(n)]
    with pytest.raises(AggregationError, match=match):
        build_strategy(StrategyConfig(name=name, params=params)).aggregate_deltas(1, updates)


def test_mismatched_delta_shapes_raise_aggregation_error() -> None:
    updates = [FlatUpdate(1, np.ones(3, np.float32), 1), FlatUpdate(2, np.ones(4, np.float32), 1)]
    with pytest.raises(AggregationError, match="client 2"):
        build_strategy(StrategyConfig()).aggregate_deltas(1, updates)


def test_zero_examples_raise_aggregation_error() -> None:
    updates = [FlatUpdate(i, np.ones(3, np.float32), 0) for i in range(2)]
    with pytest.raises(AggregationError, match="num_examples"):
        build_strategy(StrategyConfig()).aggregate_deltas(1, updates)


def test_every_strategy_is_a_strategy() -> None:
    for name in STRATEGIES:
        assert isinstance(build_strategy(StrategyConfig(name=name)), Strategy)
