"""FedAvg (McMahan et al. 2017): the num_examples-weighted mean of the client deltas."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fl.strategies.aggregate import weighted_mean
from fl.strategies.base import FlatUpdate, Strategy, result_dtype, stack_deltas


class FedAvg(Strategy):
    """Weighted mean of the deltas, then `global + server_lr * delta` (server_lr 1.0)."""

    name = "fedavg"

    def aggregate_deltas(self, server_round: int, updates: Sequence[FlatUpdate]) -> np.ndarray:
        deltas = stack_deltas(updates)
        weights = np.array([u.num_examples for u in updates], dtype=np.float64)
        return weighted_mean(deltas, weights).astype(result_dtype(updates))
