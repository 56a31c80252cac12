"""Adaptive server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization", Alg. 2).

With delta the aggregate (FedAvg) delta:
    m = beta1 * m + (1 - beta1) * delta
    v = rule(v, delta, beta2)                       # Adagrad, Adam or Yogi
    x = x + server_lr * m / (sqrt(v) + tau)
m and v start at zero, as in Flower's FedOpt family, and there is no bias correction, as in the
paper and Flower's FedYogi and FedAdagrad (Flower's FedAdam rescales server_lr; we do not).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fl.errors import ConfigError
from fl.strategies.aggregate import (
    adagrad_second_moment,
    adam_second_moment,
    adaptive_step,
    first_moment,
    yogi_second_moment,
)
from fl.strategies.base import (
    Param,
    check_same_shape,
    check_state_keys,
    in_interval,
    positive,
    scalar,
)
from fl.strategies.fedavg import FedAvg

ADAPTIVE_PARAMS = {
    "server_lr": Param(0.01, positive(), "a finite number > 0"),
    "beta1": Param(0.9, in_interval(0.0, 1.0), "a number in [0, 1)"),
    "beta2": Param(0.99, in_interval(0.0, 1.0), "a number in [0, 1)"),
    "tau": Param(1e-3, positive(), "a finite number > 0"),
}


class AdaptiveStrategy(FedAvg):
    """FedAvg aggregation, then an Adam-like server step; subclasses pick the v rule."""

    param_specs = ADAPTIVE_PARAMS

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.beta1 = float(self.params["beta1"])
        self.beta2 = float(self.params.get("beta2", 0.0))
        self.tau = float(self.params["tau"])
        self.m: np.ndarray | None = None  # created on the first step, once the size is known
        self.v: np.ndarray | None = None
        self.steps = 0

    def apply(
        self, server_round: int, global_vec: np.ndarray, aggregate_delta: np.ndarray
    ) -> np.ndarray:
        delta = check_same_shape(global_vec, aggregate_delta)
        m = np.zeros_like(delta) if self.m is None else check_same_shape(global_vec, self.m)
        v = np.zeros_like(delta) if self.v is None else check_same_shape(global_vec, self.v)
        self.m = first_moment(m, delta, self.beta1)
        self.v = self.second_moment(v, delta)
        self.steps += 1
        step = adaptive_step(self.m, self.v, self.server_lr, self.tau)
        return (global_vec.astype(np.float64) + step).astype(global_vec.dtype)

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The hook each variant overrides: the new v."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"step": scalar(self.steps)}
        if self.m is not None and self.v is not None:
            state["m"], state["v"] = self.m.copy(), self.v.copy()
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore `state_dict()`'s output; an empty mapping means no round has run yet."""
        if not state:
            self.m, self.v, self.steps = None, None, 0
            return
        check_state_keys(self.name, state, required=("step",), optional=("m", "v"))
        shapes = {np.shape(state[key]) for key in ("m", "v") if key in state}
        if ("m" in state) != ("v" in state) or len(shapes) > 1:
            raise ConfigError(
                f"saved {self.name} state must hold both moments m and v, of the same shape"
            )
        self.m = np.array(state["m"], dtype=np.float64) if "m" in state else None
        self.v = np.array(state["v"], dtype=np.float64) if "v" in state else None
        self.steps = int(np.asarray(state["step"]).reshape(-1)[0])


class FedAdagrad(AdaptiveStrategy):
    """v = v + delta^2. Takes no beta2. Flower fixes beta1 = 0 here; the paper and we keep it."""

    name = "fedadagrad"
    param_specs = {k: p for k, p in ADAPTIVE_PARAMS.items() if k != "beta2"}

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return adagrad_second_moment(v, delta, self.beta2)


class FedAdam(AdaptiveStrategy):
    """v = beta2 * v + (1 - beta2) * delta^2."""

    name = "fedadam"

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return adam_second_moment(v, delta, self.beta2)


class FedYogi(AdaptiveStrategy):
    """v = v - (1 - beta2) * delta^2 * sign(v - delta^2)."""

    name = "fedyogi"

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return yogi_second_moment(v, delta, self.beta2)
