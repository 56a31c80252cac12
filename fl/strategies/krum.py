"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries").

Each update is scored by the sum of squared distances to its n - f - 2 nearest neighbours; Krum
returns the best-scored update, Multi-Krum the unweighted mean of the m best. Both need
n > 2f + 2 updates in the round; fewer is an `AggregationError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fl.errors import ConfigError
from fl.strategies.aggregate import krum, multikrum
from fl.strategies.base import (
    SERVER_LR,
    FlatUpdate,
    Param,
    Strategy,
    int_at_least,
    result_dtype,
    stack_deltas,
)


class Krum(Strategy):
    """Returns one client's delta unchanged: the one closest to its n - f - 2 neighbours."""

    name = "krum"
    robust = True
    param_specs = {
        "server_lr": SERVER_LR,
        "f": Param(1, int_at_least(0), "an integer >= 0 (the number of attackers tolerated)"),
    }

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.f = int(self.params["f"])

    def min_updates(self) -> int:
        return 2 * self.f + 3

    def check_round_size(self, clients_per_round: int) -> None:
        if clients_per_round < 3:
            raise ConfigError(
                f"strategy {self.name} needs at least 3 updates per round (n > 2f + 2); "
                f"rounds.clients_per_round is {clients_per_round}"
            )
        largest_f = (clients_per_round - 3) // 2
        if self.f > largest_f:
            raise ConfigError(
                f"strategy.params.f={self.f} is too large for rounds.clients_per_round="
                f"{clients_per_round}: {self.name} needs n > 2f + 2, so f must be in "
                f"[0, {largest_f}]"
            )

    def aggregate_deltas(self, server_round: int, updates: Sequence[FlatUpdate]) -> np.ndarray:
        return krum(stack_deltas(updates), self.f).astype(result_dtype(updates))


class MultiKrum(Krum):
    """Mean of the m best-scored deltas, unweighted as in the paper (Flower weights by
    num_examples, which a Byzantine client could inflate). m defaults to n - f."""

    name = "multikrum"
    param_specs = {
        **Krum.param_specs,
        "m": Param(None, int_at_least(1, optional=True), "an integer >= 1, or null for n - f"),
    }

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.m: int | None = None if self.params["m"] is None else int(self.params["m"])

    def min_updates(self) -> int:
        # n > 2f + 2 for the scores, and m <= n - f for the selection.
        return max(2 * self.f + 3, (self.m or 0) + self.f)

    def check_round_size(self, clients_per_round: int) -> None:
        super().check_round_size(clients_per_round)
        if self.m is not None and self.m > clients_per_round - self.f:
            raise ConfigError(
                f"strategy.params.m={self.m} is too large for rounds.clients_per_round="
                f"{clients_per_round} and f={self.f}: "
                f"m must be in [1, {clients_per_round - self.f}]"
            )

    def aggregate_deltas(self, server_round: int, updates: Sequence[FlatUpdate]) -> np.ndarray:
        m = len(updates) - self.f if self.m is None else self.m
        return multikrum(stack_deltas(updates), self.f, m).astype(result_dtype(updates))
