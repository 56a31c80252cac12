"""Screens that refuse client updates before aggregation, each with a reason naming the client.

A screen is a callable (structlog-processor shape: settings in `__init__`, work in `__call__`)
from a round's updates to `(accepted, refusals)`. Screens compose by running in order, each on
what the previous one accepted: shape first (nothing else makes sense on a wrong-length
vector), then finiteness (a NaN has no norm), then the absolute norm bound, then the bound
relative to the median norm of the updates still standing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fl.config import ScreeningConfig
from fl.errors import ConfigError
from fl.strategies.base import FlatUpdate

Screened = tuple[list[FlatUpdate], list["Refusal"]]


@dataclass(frozen=True)
class Refusal:
    """An update left out of the round, and why (the reason names the client)."""

    client_id: int
    reason: str


class Screen(Protocol):
    def __call__(self, updates: Sequence[FlatUpdate]) -> Screened: ...


def _split(updates: Sequence[FlatUpdate], reasons: Sequence[str | None]) -> Screened:
    accepted = [u for u, reason in zip(updates, reasons, strict=True) if reason is None]
    refusals = [
        Refusal(u.client_id, reason)
        for u, reason in zip(updates, reasons, strict=True)
        if reason is not None
    ]
    return accepted, refusals


def _norm(update: FlatUpdate) -> float:
    return float(np.linalg.norm(np.asarray(update.delta, dtype=np.float64)))


class ShapeScreen:
    """Refuses deltas that are not flat real float vectors of the global vector's length."""

    def __init__(self, expected_size: int, dtype: np.dtype | type | None = None) -> None:
        self.expected_size = expected_size
        self.dtype = None if dtype is None else np.dtype(dtype)

    def _reason(self, update: FlatUpdate) -> str | None:
        delta = update.delta
        who = f"client {update.client_id}"
        if not isinstance(delta, np.ndarray):
            return f"{who}: delta is a {type(delta).__name__}, not a numpy array"
        if not np.issubdtype(delta.dtype, np.floating):
            return f"{who}: delta has dtype {delta.dtype}; expected a real floating dtype"
        if self.dtype is not None and delta.dtype != self.dtype:
            return f"{who}: delta has dtype {delta.dtype}; expected {self.dtype}"
        if delta.ndim != 1 or delta.size != self.expected_size:
            return (
                f"{who}: delta has shape {delta.shape}; expected a flat vector of "
                f"{self.expected_size} values like the global model"
            )
        return None

    def __call__(self, updates: Sequence[FlatUpdate]) -> Screened:
        return _split(updates, [self._reason(u) for u in updates])


class FiniteScreen:
    """Refuses deltas holding NaN or infinite values."""

    def _reason(self, update: FlatUpdate) -> str | None:
        bad = int(np.size(update.delta) - np.count_nonzero(np.isfinite(update.delta)))
        if bad:
            return f"client {update.client_id}: delta has {bad} non-finite values (NaN or Inf)"
        return None

    def __call__(self, updates: Sequence[FlatUpdate]) -> Screened:
        return _split(updates, [self._reason(u) for u in updates])


class NormBoundScreen:
    """Refuses deltas whose L2 norm exceeds an absolute bound."""

    def __init__(self, max_norm: float) -> None:
        if not max_norm > 0:
            raise ConfigError(f"screening.max_norm must be > 0; got {max_norm!r}")
        self.max_norm = max_norm

    def _reason(self, update: FlatUpdate) -> str | None:
        norm = _norm(update)
        if norm > self.max_norm:
            return (
                f"client {update.client_id}: delta L2 norm {norm:.4g} exceeds "
                f"screening.max_norm {self.max_norm:.4g}"
            )
        return None

    def __call__(self, updates: Sequence[FlatUpdate]) -> Screened:
        return _split(updates, [self._reason(u) for u in updates])


class RelativeNormScreen:
    """Refuses deltas whose L2 norm exceeds `factor` times the median norm of the round.

    The median is over the updates this screen is given; with factor >= 1 at least half of
    them always pass. A factor below 1 would refuse honest clients every round, so it is an
    error.
    """

    def __init__(self, factor: float) -> None:
        if not factor >= 1:
            raise ConfigError(
                f"screening.max_norm_factor must be >= 1 (a multiple of the median norm); "
                f"got {factor!r}"
            )
        self.factor = factor

    def __call__(self, updates: Sequence[FlatUpdate]) -> Screened:
        if not updates:
            return [], []
        norms = [_norm(u) for u in updates]
        bound = self.factor * float(np.median(norms))
        reasons = [
            None
            if norm <= bound
            else (
                f"client {u.client_id}: delta L2 norm {norm:.4g} exceeds "
                f"{self.factor:g} x the round's median norm ({bound:.4g})"
            )
            for u, norm in zip(updates, norms, strict=True)
        ]
        return _split(updates, reasons)


def run_screens(screens: Sequence[Screen], updates: Sequence[FlatUpdate]) -> Screened:
    """Run screens in order, each on what the previous accepted; refusals are concatenated."""
    accepted, refusals = list(updates), []
    for screen in screens:
        accepted, refused = screen(accepted)
        refusals.extend(refused)
    return accepted, refusals


def build_screens(
    cfg: ScreeningConfig, expected_size: int, dtype: np.dtype | type | None = None
) -> list[Screen]:
    """Shape and finiteness always; the norm bounds when configured."""
    screens: list[Screen] = [ShapeScreen(expected_size, dtype), FiniteScreen()]
    if cfg.max_norm is not None:
        screens.append(NormBoundScreen(cfg.max_norm))
    if cfg.max_norm_factor is not None:
        screens.append(RelativeNormScreen(cfg.max_norm_factor))
    return screens


def screen_updates(
    updates: Sequence[FlatUpdate],
    cfg: ScreeningConfig,
    expected_size: int,
    *,
    dtype: np.dtype | type | None = None,
) -> Screened:
    """Accepted updates (in their original order) and one `Refusal` per refused update."""
    return run_screens(build_screens(cfg, expected_size, dtype), updates)
