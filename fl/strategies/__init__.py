"""Aggregation strategies over flat weight vectors, built from a `StrategyConfig`."""

from __future__ import annotations

from fl.config import STRATEGIES, StrategyConfig
from fl.errors import ConfigError
from fl.strategies.adaptive import FedAdagrad, FedAdam, FedYogi
from fl.strategies.base import FlatUpdate, Strategy
from fl.strategies.fedavg import FedAvg
from fl.strategies.fedavgm import FedAvgM
from fl.strategies.fedprox import FedProx
from fl.strategies.krum import Krum, MultiKrum
from fl.strategies.median import Median
from fl.strategies.trimmed_mean import TrimmedMean

STRATEGY_CLASSES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedProx, Median, TrimmedMean, Krum, MultiKrum
    )
}  # fmt: skip
assert set(STRATEGY_CLASSES) == set(STRATEGIES), "fl.config.STRATEGIES and the classes disagree"


def build_strategy(cfg: StrategyConfig, *, clients_per_round: int | None = None) -> Strategy:
    """The configured strategy; a bad name or parameter is a `ConfigError` naming it.

    With `clients_per_round`, also checks the strategy can aggregate that many updates (Krum's
    n > 2f + 2). Rounds that end up with fewer updates (dropouts, refusals) raise
    `AggregationError` when aggregated.
    """
    cls = STRATEGY_CLASSES.get(cfg.name)
    if cls is None:
        raise ConfigError(f"unknown strategy {cfg.name!r}; choose one of {', '.join(STRATEGIES)}")
    strategy = cls(**cfg.params)
    if clients_per_round is not None:
        strategy.check_round_size(clients_per_round)
    return strategy


__all__ = [
    "STRATEGY_CLASSES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "FlatUpdate",
    "Krum",
    "Median",
    "MultiKrum",
    "Strategy",
    "TrimmedMean",
    "build_strategy",
]
