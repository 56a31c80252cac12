"""Client-level differential privacy: DP-FedAvg (McMahan et al. 2018) with RDP accounting.

Each round, every client delta is clipped to L2 norm <= C, the clipped deltas are summed,
Gaussian noise N(0, (z * C)^2 I) is added to the sum, and the result is divided by a fixed
denominator (the number of clients sampled for the round). One round is one step of the sampled
Gaussian mechanism with sample rate q = clients per round / clients in the population, which
Opacus's RDP accountant composes into (epsilon, delta).

Caveat recorded in `privacy_record`: the RDP analysis assumes Poisson sampling of clients; the
pipeline samples a fixed number without replacement, the usual approximation.

Opacus is imported where the accountant is used, not at module import: it pulls in torch's
distributed stack (seconds), which clipping and noising do not need.

Epsilon with noise multiplier 0 is infinite. Python callers get `math.inf`; the JSON record
stores `"epsilon": null` with `"epsilon_note"` saying why, since JSON has no infinity.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fl.errors import AggregationError, ConfigError
from fl.strategies.base import FlatUpdate, result_dtype, stack_deltas

ACCOUNTANT = "opacus RDPAccountant (sampled Gaussian mechanism, one step per round)"
INFINITE_EPSILON_NOTE = "epsilon is unbounded (infinite): noise_multiplier is 0, so no DP guarantee"


def _check_clip_norm(clip_norm: float) -> None:
    if not (isinstance(clip_norm, int | float) and math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"privacy.clip_norm must be a finite number > 0; got {clip_norm!r}")


def _check_noise_multiplier(noise_multiplier: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ConfigError(
            f"privacy.noise_multiplier must be a finite number >= 0; got {noise_multiplier!r}"
        )


def clip_delta(delta: np.ndarray, clip_norm: float) -> np.ndarray:
    """`delta` scaled by min(1, C / ||delta||), in its own dtype, with norm <= C guaranteed.

    Rounding to float32 can push a vector scaled to exactly C a hair above it, which would break
    the sensitivity bound the noise is calibrated to, so such a result is shrunk by a few ulps.
    """
    _check_clip_norm(clip_norm)
    source = np.asarray(delta)
    dtype = source.dtype if np.issubdtype(source.dtype, np.floating) else np.dtype(np.float64)
    values = source.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise AggregationError("cannot clip a delta with NaN or Inf values; screen updates first")
    norm = float(np.linalg.norm(values))
    if norm <= clip_norm:
        return source.astype(dtype, copy=True)
    scaled = values * (clip_norm / norm)
    result = scaled.astype(dtype)
    shrink = 1.0
    while np.linalg.norm(result.astype(np.float64)) > clip_norm:
        shrink *= 1 - 4 * float(np.finfo(dtype).eps)
        result = (scaled * shrink).astype(dtype)
    return result


def dp_aggregate(
    updates: Sequence[FlatUpdate],
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    *,
    denominator: int | None = None,
) -> np.ndarray:
    """(sum of clipped deltas + N(0, (z * C)^2 I)) / n, the unweighted DP-FedAvg mean.

    `denominator` is the fixed n: pass the number of clients sampled for the round so that
    dropped or refused clients do not change it (default: `len(updates)`). `num_examples` is
    ignored: weighting would let one client's influence exceed C / n.
    """
    _check_noise_multiplier(noise_multiplier)
    deltas = stack_deltas(updates)
    n = len(updates) if denominator is None else denominator
    if n < len(updates):
        raise AggregationError(
            f"the DP denominator must be at least the number of updates ({len(updates)}); got {n}"
        )
    total = np.zeros(deltas.shape[1], dtype=np.float64)
    for row in deltas:
        total += clip_delta(row, clip_norm)
    noise_std = noise_multiplier * clip_norm
    if noise_std > 0:
        total += rng.normal(0.0, noise_std, size=total.shape)
    return (total / n).astype(result_dtype(updates))


def compute_epsilon(sample_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
    """Epsilon after `steps` rounds at rate q and multiplier z (Opacus RDP, its default orders)."""
    _check_accounting(noise_multiplier, sample_rate, delta)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0; got {steps!r}")
    return _epsilon([(noise_multiplier, sample_rate, int(steps))], delta)


def _check_accounting(noise_multiplier: float, sample_rate: float, delta: float) -> None:
    _check_noise_multiplier(noise_multiplier)
    if not 0 <= sample_rate <= 1:
        raise ConfigError(f"sample rate must be in [0, 1]; got {sample_rate!r}")
    if not 0 < delta < 1:
        raise ConfigError(f"privacy.delta must be in (0, 1); got {delta!r}")


def _epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Epsilon of a composition of (noise_multiplier, sample_rate, steps) runs."""
    history = [(z, q, s) for z, q, s in history if s > 0 and q > 0]
    if not history:
        return 0.0  # nothing released yet (Opacus's RDPAccountant also answers 0)
    if any(z == 0 for z, _, _ in history):
        return math.inf
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = sum(_rdp_per_step(q, z) * s for z, q, s in history)
    orders = RDPAccountant.DEFAULT_ALPHAS
    eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=64)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one step at each of Opacus's default orders. Opacus computes `rdp(1 step) * steps`
    the same way; caching makes the per-round epsilon cheap (the orders loop costs ~0.2 s)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = rdp_analysis.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=RDPAccountant.DEFAULT_ALPHAS,
    )
    rdp.setflags(write=False)
    return rdp


class PrivacyAccountant:
    """Opacus's RDP accountant, one `step()` per DP round, resumable from a numpy state dict.

    The state holds the whole history (noise multiplier, sample rate, steps) so a run resumed
    with a different multiplier or sample rate still composes exactly.
    """

    def __init__(self, noise_multiplier: float, sample_rate: float, delta: float) -> None:
        _check_accounting(noise_multiplier, sample_rate, delta)
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.delta = float(delta)
        from opacus.accountants import RDPAccountant

        self._accountant = RDPAccountant()

    def step(self) -> None:
        """Record one round of the sampled Gaussian mechanism."""
        self._accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    @property
    def steps(self) -> int:
        return sum(int(s) for _, _, s in self._accountant.history)

    def epsilon(self) -> float:
        """Epsilon spent so far at this accountant's delta; `math.inf` without noise."""
        return _epsilon(self._accountant.history, self.delta)

    def state_dict(self) -> dict[str, np.ndarray]:
        history = self._accountant.history
        return {
            "noise_multipliers": np.array([z for z, _, _ in history], dtype=np.float64),
            "sample_rates": np.array([q for _, q, _ in history], dtype=np.float64),
            "steps": np.array([s for _, _, s in history], dtype=np.int64),
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore `state_dict()`'s output; an empty mapping means no round has been accounted."""
        keys = ("noise_multipliers", "sample_rates", "steps")
        if not state:
            self._accountant.history = []
            return
        if set(state) != set(keys) or len({np.shape(state[k]) for k in keys}) != 1:
            raise ConfigError(
                f"saved privacy accountant state must hold equal-length arrays {list(keys)}; "
                f"got {sorted(state)}"
            )
        self._accountant.history = [
            (float(z), float(q), int(s))
            for z, q, s in zip(*(np.asarray(state[k]).reshape(-1) for k in keys), strict=True)
        ]


def privacy_record(accountant: PrivacyAccountant, clip_norm: float) -> dict[str, Any]:
    """What a manifest records about the privacy of the rounds run so far (JSON-safe)."""
    epsilon = accountant.epsilon()
    record: dict[str, Any] = {
        "mechanism": "DP-FedAvg (client-level, fixed denominator, Gaussian noise)",
        "accountant": ACCOUNTANT,
        "epsilon": epsilon if math.isfinite(epsilon) else None,
        "delta": accountant.delta,
        "clip_norm": float(clip_norm),
        "noise_multiplier": accountant.noise_multiplier,
        "sample_rate": accountant.sample_rate,
        "rounds": accountant.steps,
        "sampling_note": "RDP analysis assumes Poisson sampling; clients are sampled fixed-size",
    }
    if not math.isfinite(epsilon):
        record["epsilon_note"] = INFINITE_EPSILON_NOTE
    return record
