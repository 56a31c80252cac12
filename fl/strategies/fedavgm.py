"""FedAvgM (Hsu et al. 2019): FedAvg with server momentum, v = momentum * v + delta."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fl.strategies.aggregate import momentum_buffer
from fl.strategies.base import (
    SERVER_LR,
    Param,
    check_same_shape,
    check_state_keys,
    in_interval,
    scalar,
)
from fl.strategies.fedavg import FedAvg


class FedAvgM(FedAvg):
    """Next global = global + server_lr * v. Equals Flower's FedAvgM with server_opt on.

    Flower keeps a buffer of pseudo-gradients (-delta) and subtracts; the sign cancels.
    """

    name = "fedavgm"
    param_specs = {
        "server_lr": SERVER_LR,
        "momentum": Param(0.9, in_interval(0.0, 1.0), "a number in [0, 1)"),
    }

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.momentum = float(self.params["momentum"])
        self.buffer: np.ndarray | None = None  # created on the first step, once the size is known
        self.steps = 0

    def apply(
        self, server_round: int, global_vec: np.ndarray, aggregate_delta: np.ndarray
    ) -> np.ndarray:
        delta = check_same_shape(global_vec, aggregate_delta)
        if self.buffer is None:
            self.buffer = np.zeros_like(delta)
        check_same_shape(global_vec, self.buffer)
        self.buffer = momentum_buffer(self.buffer, delta, self.momentum)
        self.steps += 1
        return (global_vec.astype(np.float64) + self.server_lr * self.buffer).astype(
            global_vec.dtype
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"step": scalar(self.steps)}
        if self.buffer is not None:
            state["momentum_buffer"] = self.buffer.copy()
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore `state_dict()`'s output; an empty mapping means no round has run yet."""
        if not state:
            self.buffer, self.steps = None, 0
            return
        check_state_keys(self.name, state, required=("step",), optional=("momentum_buffer",))
        buffer = state.get("momentum_buffer")
        self.buffer = None if buffer is None else np.array(buffer, dtype=np.float64)
        self.steps = int(np.asarray(state["step"]).reshape(-1)[0])
