"""Coordinate-wise trimmed mean (Yin et al. 2018; Flower's FedTrimmedAvg)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fl.strategies.aggregate import trimmed_mean
from fl.strategies.base import (
    SERVER_LR,
    FlatUpdate,
    Param,
    Strategy,
    in_interval,
    result_dtype,
    stack_deltas,
)


class TrimmedMean(Strategy):
    """Per coordinate, drop the floor(beta * n) smallest and largest deltas and average the rest.

    `num_examples` is ignored. beta = 0 is the plain mean; beta < 0.5 always leaves a value.
    """

    name = "trimmed_mean"
    robust = True
    param_specs = {
        "server_lr": SERVER_LR,
        "beta": Param(0.1, in_interval(0.0, 0.5), "a number in [0, 0.5)"),
    }

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.beta = float(self.params["beta"])

    def aggregate_deltas(self, server_round: int, updates: Sequence[FlatUpdate]) -> np.ndarray:
        return trimmed_mean(stack_deltas(updates), self.beta).astype(result_dtype(updates))
