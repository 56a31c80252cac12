"""The strategy interface: one method per phase of a round, over flat float vectors.

A strategy takes its settings in `__init__(**params)` (validated against the class's
`param_specs`, so a bad value is a `ConfigError` naming it), and a variant overrides one hook:
FedProx only changes `configure_train`, FedAvgM and the adaptive optimizers only change `apply`,
the robust rules only change `aggregate_deltas`. The maths lives in `fl.strategies.aggregate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fl.errors import AggregationError, ConfigError


# eq=False: the generated __eq__ would compare ndarrays (ambiguous truth value) and the generated
# __hash__ would hash them (unhashable); identity equality is what callers can rely on.
@dataclass(frozen=True, eq=False)
class FlatUpdate:
    """One client's contribution to a round: its weights minus the global weights."""

    client_id: int
    delta: np.ndarray
    num_examples: int


@dataclass(frozen=True)
class Param:
    """A strategy setting: its default, a check on its value, and the accepted range in words."""

    default: Any
    accepts: Callable[[Any], bool]
    accepted: str


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive() -> Callable[[Any], bool]:
    return lambda v: _is_real(v) and v > 0


def non_negative() -> Callable[[Any], bool]:
    return lambda v: _is_real(v) and v >= 0


def in_interval(low: float, high: float) -> Callable[[Any], bool]:
    """The half-open interval [low, high)."""
    return lambda v: _is_real(v) and low <= v < high


def int_at_least(low: int, *, optional: bool = False) -> Callable[[Any], bool]:
    return lambda v: (optional and v is None) or (_is_int(v) and v >= low)


SERVER_LR = Param(1.0, positive(), "a finite number > 0")


class Strategy:
    """Base strategy: no client settings, no server state, `global + server_lr * delta`.

    Subclasses set `name`, `param_specs` and override `aggregate_deltas`; the default
    `aggregate_deltas` is abstract because every rule is a choice.
    """

    name: ClassVar[str] = "strategy"
    robust: ClassVar[bool] = False
    param_specs: ClassVar[Mapping[str, Param]] = {"server_lr": SERVER_LR}

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = _validated(self.name, self.param_specs, params)
        self.server_lr = float(self.params["server_lr"])

    # -- phases of a round -------------------------------------------------------------------

    def configure_train(self, server_round: int) -> dict[str, float]:
        """Settings sent to every client trained this round."""
        return {}

    def aggregate_deltas(self, server_round: int, updates: Sequence[FlatUpdate]) -> np.ndarray:
        """Combine the round's client deltas into one aggregate delta."""
        raise NotImplementedError(f"{type(self).__name__} does not define aggregate_deltas")

    def apply(
        self, server_round: int, global_vec: np.ndarray, aggregate_delta: np.ndarray
    ) -> np.ndarray:
        """The server optimizer step: the next global vector, in `global_vec`'s dtype."""
        delta = check_same_shape(global_vec, aggregate_delta)
        step = self.server_lr * delta
        return (global_vec.astype(np.float64) + step).astype(global_vec.dtype)

    def aggregate_train(
        self, server_round: int, global_vec: np.ndarray, updates: Sequence[FlatUpdate]
    ) -> np.ndarray:
        return self.apply(server_round, global_vec, self.aggregate_deltas(server_round, updates))

    # -- limits, state and description -------------------------------------------------------

    def min_updates(self) -> int:
        """The fewest client updates `aggregate_deltas` accepts with these settings."""
        return 1

    def check_round_size(self, clients_per_round: int) -> None:
        """Raise `ConfigError` if rounds of this size can never be aggregated."""
        if clients_per_round < self.min_updates():
            raise ConfigError(
                f"strategy {self.name} needs at least {self.min_updates()} updates per round; "
                f"rounds.clients_per_round is {clients_per_round}"
            )

    def state_dict(self) -> dict[str, np.ndarray]:
        """Server state as numpy arrays only (it is stored as safetensors)."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        check_state_keys(self.name, state, required=(), optional=())

    def describe(self) -> dict[str, Any]:
        """Name and every parameter (defaults filled in), JSON-safe, for manifests."""
        return {"name": self.name, "params": dict(self.params)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def _validated(name: str, specs: Mapping[str, Param], params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(specs))
    if unknown:
        accepted = ", ".join(specs) or "none"
        raise ConfigError(
            f"strategy.params.{unknown[0]} is not a parameter of {name}; accepted: {accepted}"
        )
    values = {key: spec.default for key, spec in specs.items()}
    for key, value in params.items():
        if not specs[key].accepts(value):
            raise ConfigError(
                f"strategy.params.{key} must be {specs[key].accepted} for {name}; got {value!r}"
            )
        values[key] = value
    return values


def stack_deltas(updates: Sequence[FlatUpdate]) -> np.ndarray:
    """The deltas as rows of one float64 matrix, after checking they can be combined."""
    if not updates:
        raise AggregationError("no client updates to aggregate; at least one is needed")
    first = np.asarray(updates[0].delta)
    for update in updates:
        delta = np.asarray(update.delta)
        if delta.ndim != 1 or delta.shape != first.shape:
            raise AggregationError(
                f"client {update.client_id} sent a delta of shape {delta.shape}; "
                f"expected a flat vector of shape {first.shape} like client {updates[0].client_id}"
            )
    return np.stack([np.asarray(u.delta, dtype=np.float64) for u in updates])


def result_dtype(updates: Sequence[FlatUpdate]) -> np.dtype:
    """Aggregates come back in the clients' floating dtype (float32 for model weights)."""
    dtype = np.asarray(updates[0].delta).dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)


def check_same_shape(global_vec: np.ndarray, delta: np.ndarray) -> np.ndarray:
    delta = np.asarray(delta)
    if global_vec.ndim != 1 or delta.shape != global_vec.shape:
        raise AggregationError(
            f"aggregate delta of shape {delta.shape} does not match the global vector of shape "
            f"{global_vec.shape}; both must be flat vectors of the same length"
        )
    return delta.astype(np.float64)


def check_state_keys(
    name: str, state: Mapping[str, np.ndarray], required: Sequence[str], optional: Sequence[str]
) -> None:
    """A state that does not belong to this strategy is a configuration error, not a crash."""
    allowed = set(required) | set(optional)
    unexpected = sorted(set(state) - allowed)
    missing = sorted(set(required) - set(state))
    if unexpected or missing:
        expected = ", ".join(sorted(allowed)) or "no keys"
        raise ConfigError(
            f"saved strategy state has keys {sorted(state)} but {name} expects {expected}; "
            "was the checkpoint written with a different strategy?"
        )


def scalar(value: float | int, dtype: type = np.int64) -> np.ndarray:
    """A 1-element array, the form scalars take in a state dict."""
    return np.array([value], dtype=dtype)
