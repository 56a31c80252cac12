"""Coordinate-wise median (Yin et al. 2018): one outlier per coordinate cannot move it far."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fl.strategies.aggregate import coordinate_median
from fl.strategies.base import FlatUpdate, Strategy, result_dtype, stack_deltas


class Median(Strategy):
    """Median of the deltas per coordinate; `num_examples` is ignored (a client can lie about it).

    The median of the deltas equals the median of the client weights minus the global vector.
    """

    name = "median"
    robust = True

    def aggregate_deltas(self, server_round: int, updates: Sequence[FlatUpdate]) -> np.ndarray:
        return coordinate_median(stack_deltas(updates)).astype(result_dtype(updates))
