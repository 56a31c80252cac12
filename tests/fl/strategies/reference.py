"""Independent reference implementations of every strategy, written as plain loops.

Nothing here imports `fl.strategies`: the expected values in the tests come from these.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

DEFAULTS: dict[str, dict[str, Any]] = {
    "fedavg": {"server_lr": 1.0},
    "fedprox": {"server_lr": 1.0, "mu": 0.01},
    "fedavgm": {"server_lr": 1.0, "momentum": 0.9},
    "fedadam": {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedyogi": {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedadagrad": {"server_lr": 0.01, "beta1": 0.9, "tau": 1e-3},
    "median": {"server_lr": 1.0},
    "trimmed_mean": {"server_lr": 1.0, "beta": 0.1},
    "krum": {"server_lr": 1.0, "f": 1},
    "multikrum": {"server_lr": 1.0, "f": 1, "m": None},
}


def _column_median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _krum_scores(deltas: np.ndarray, f: int) -> list[float]:
    n = len(deltas)
    scores = []
    for i in range(n):
        distances = sorted(float(np.sum((deltas[i] - deltas[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(distances[: n - f - 2]))
    return scores


def reference_aggregate(
    name: str, params: dict[str, Any], deltas: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    n, d = deltas.shape
    if name in ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        return np.average(deltas, axis=0, weights=weights)
    if name == "median":
        return np.array([_column_median(list(deltas[:, j])) for j in range(d)])
    if name == "trimmed_mean":
        k = int(params["beta"] * n)
        return np.array([np.mean(sorted(deltas[:, j])[k : n - k]) for j in range(d)])
    scores = _krum_scores(deltas, params["f"])
    if name == "krum":
        return deltas[int(np.argmin(scores))]
    m = params["m"] if params["m"] is not None else n - params["f"]
    best = sorted(range(n), key=lambda i: scores[i])[:m]
    return np.mean([deltas[i] for i in best], axis=0)


def reference_apply(
    name: str,
    params: dict[str, Any],
    state: dict[str, np.ndarray],
    x: np.ndarray,
    delta: np.ndarray,
) -> np.ndarray:
    """One server step; `state` (empty dict at first) is updated in place."""
    if name == "fedavgm":
        state["v"] = params["momentum"] * state.get("v", np.zeros_like(x)) + delta
        return x + params["server_lr"] * state["v"]
    if name not in ("fedadam", "fedyogi", "fedadagrad"):
        return x + params["server_lr"] * delta
    m = state.get("m", np.zeros_like(x))
    v = state.get("v", np.zeros_like(x))
    new_m, new_v = np.empty_like(x), np.empty_like(x)
    for j in range(len(x)):
        new_m[j] = params["beta1"] * m[j] + (1 - params["beta1"]) * delta[j]
        sq = delta[j] ** 2
        if name == "fedadagrad":
            new_v[j] = v[j] + sq
        elif name == "fedadam":
            new_v[j] = params["beta2"] * v[j] + (1 - params["beta2"]) * sq
        else:
            sign = 1.0 if v[j] > sq else (-1.0 if v[j] < sq else 0.0)
            new_v[j] = v[j] - (1 - params["beta2"]) * sq * sign
    state["m"], state["v"] = new_m, new_v
    step = [
        params["server_lr"] * new_m[j] / (math.sqrt(new_v[j]) + params["tau"])
        for j in range(len(x))
    ]
    return x + np.array(step)
