"""Aggregation and server-optimizer formulas as plain functions on numpy arrays.

`deltas` is always an (n, d) matrix: one row per client. Functions compute in float64 and
return float64; the strategies cast back to the model's dtype. References:
- FedAvg: McMahan et al. 2017, weighted by `num_examples`.
- Median / trimmed mean: Yin et al. 2018, "Byzantine-Robust Distributed Learning".
- Krum / Multi-Krum: Blanchard et al. 2017, "Machine Learning with Adversaries".
- FedAvgM: Hsu et al. 2019; the adaptive rules: Reddi et al. 2021, Algorithm 2.
"""

from __future__ import annotations

import math

import numpy as np

from fl.errors import AggregationError


def weighted_mean(deltas: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of the rows weighted by `weights` (FedAvg uses each client's `num_examples`)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (deltas.shape[0],):
        raise AggregationError(f"{weights.size} weights given for {deltas.shape[0]} updates")
    if np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise AggregationError(f"weights must be finite and >= 0; got {weights.tolist()}")
    total = weights.sum()
    if total <= 0:
        raise AggregationError("the updates' num_examples sum to 0; a weighted mean needs > 0")
    return (weights / total) @ np.asarray(deltas, dtype=np.float64)


def coordinate_median(deltas: np.ndarray) -> np.ndarray:
    """Per coordinate, the median over clients (mean of the two middle values when n is even)."""
    return np.median(np.asarray(deltas, dtype=np.float64), axis=0)


def num_trimmed(n: int, beta: float) -> int:
    """floor(beta * n), robust to products like 0.29 * 100 = 28.999999999999996."""
    return math.floor(beta * n + 1e-9)


def trimmed_mean(deltas: np.ndarray, beta: float) -> np.ndarray:
    """Per coordinate, drop the floor(beta * n) smallest and largest values and average the rest."""
    if not 0 <= beta < 0.5:
        raise AggregationError(f"trimmed mean needs beta in [0, 0.5); got {beta!r}")
    n = deltas.shape[0]
    k = num_trimmed(n, beta)
    ordered = np.sort(np.asarray(deltas, dtype=np.float64), axis=0)
    return ordered[k : n - k].mean(axis=0)


def pairwise_sq_distances(deltas: np.ndarray) -> np.ndarray:
    """Squared L2 distances between rows, computed by differences (no cancellation)."""
    rows = np.asarray(deltas, dtype=np.float64)
    return np.stack([np.sum((rows - row) ** 2, axis=1) for row in rows])


def check_krum_clients(n: int, f: int) -> None:
    """Krum's guarantee needs n > 2f + 2 (Blanchard et al. 2017, Proposition 1)."""
    if f < 0 or n < 2 * f + 3:
        raise AggregationError(
            f"Krum with f={f} needs at least {2 * f + 3} client updates (n > 2f + 2); got {n}"
        )


def krum_scores(deltas: np.ndarray, f: int) -> np.ndarray:
    """Each row's sum of squared distances to its n - f - 2 nearest other rows."""
    n = deltas.shape[0]
    check_krum_clients(n, f)
    distances = pairwise_sq_distances(deltas)
    np.fill_diagonal(distances, np.inf)  # a row is not its own neighbour
    closest = np.sort(distances, axis=1)[:, : n - f - 2]
    return closest.sum(axis=1)


def krum(deltas: np.ndarray, f: int) -> np.ndarray:
    """The row with the lowest Krum score (the first one on ties)."""
    return np.asarray(deltas[int(np.argmin(krum_scores(deltas, f)))], dtype=np.float64)


def multikrum_selection(deltas: np.ndarray, f: int, m: int) -> np.ndarray:
    """Indices of the m rows with the lowest Krum scores (stable on ties)."""
    n = deltas.shape[0]
    if not 1 <= m <= n - f:
        raise AggregationError(f"Multi-Krum needs m in [1, n - f] = [1, {n - f}]; got m={m}")
    return np.argsort(krum_scores(deltas, f), kind="stable")[:m]


def multikrum(deltas: np.ndarray, f: int, m: int) -> np.ndarray:
    """Unweighted mean of the m best-scored rows (Blanchard et al.'s Multi-Krum)."""
    return np.asarray(deltas, dtype=np.float64)[multikrum_selection(deltas, f, m)].mean(axis=0)


# -- server optimizers ------------------------------------------------------------------------


def momentum_buffer(buffer: np.ndarray, delta: np.ndarray, momentum: float) -> np.ndarray:
    """FedAvgM: v = momentum * v + delta (the server then steps x + server_lr * v)."""
    return momentum * buffer + delta


def first_moment(m: np.ndarray, delta: np.ndarray, beta1: float) -> np.ndarray:
    """m = beta1 * m + (1 - beta1) * delta."""
    return beta1 * m + (1 - beta1) * delta


def adagrad_second_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    """v = v + delta^2 (beta2 is not used; the signature matches the other rules)."""
    return v + delta**2


def adam_second_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    """v = beta2 * v + (1 - beta2) * delta^2."""
    return beta2 * v + (1 - beta2) * delta**2


def yogi_second_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    """v = v - (1 - beta2) * delta^2 * sign(v - delta^2)."""
    squared = delta**2
    return v - (1 - beta2) * squared * np.sign(v - squared)


def adaptive_step(m: np.ndarray, v: np.ndarray, server_lr: float, tau: float) -> np.ndarray:
    """The step added to the global vector: eta * m / (sqrt(v) + tau)."""
    return server_lr * m / (np.sqrt(v) + tau)
