"""Partitioners: how a pooled dataset is split over simulated clients.

`iid` deals samples out evenly; `dirichlet` skews each client's label mix (smaller alpha, more
skew) and never leaves a client empty; `shards` gives each client a few label-sorted shards.
All are deterministic in the random generator they are given.
"""

from __future__ import annotations

import numpy as np

from fl.config import DataConfig
from fl.errors import ConfigError
from fl.sampling import derive_seed

_DIRICHLET_ATTEMPTS = 100


def _check_enough_samples(num_samples: int, needed: int, what: str) -> None:
    if needed > num_samples:
        raise ConfigError(f"cannot split {num_samples} training samples into {what}")


def partition_iid(
    labels: np.ndarray, num_clients: int, *, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle, then split into `num_clients` parts whose sizes differ by at most one."""
    _check_enough_samples(len(labels), num_clients, f"{num_clients} non-empty clients")
    parts = np.array_split(rng.permutation(len(labels)), num_clients)
    return [np.sort(part) for part in parts]


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    *,
    alpha: float,
    rng: np.random.Generator,
    min_size: int | None = None,
) -> list[np.ndarray]:
    """Label skew: each class is split over clients in Dirichlet(alpha) proportions.

    Smaller `alpha` means fewer classes per client. Every client ends with at least `min_size`
    samples (default: 10, or fewer when the data is small): the split is redrawn up to 100 times,
    then samples are moved from the largest clients to the short ones.
    """
    labels = np.asarray(labels)
    num_samples = len(labels)
    if alpha <= 0:
        raise ConfigError(f"dirichlet alpha must be positive, got {alpha}")
    if min_size is None:
        min_size = max(1, min(10, num_samples // (2 * num_clients)))
    _check_enough_samples(
        num_samples, num_clients * min_size, f"{num_clients} clients of at least {min_size}"
    )
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    for _ in range(_DIRICHLET_ATTEMPTS):
        # bounds[k][c]:bounds[k][c + 1] is client c's slice of class k.
        bounds = [_dirichlet_bounds(len(indices), num_clients, alpha, rng) for indices in by_class]
        if np.sum([np.diff(b) for b in bounds], axis=0).min() >= min_size:
            break
    clients = [
        np.concatenate(
            [indices[b[c] : b[c + 1]] for indices, b in zip(by_class, bounds, strict=True)]
        )
        for c in range(num_clients)
    ]
    _top_up(clients, min_size, rng)
    return [np.sort(c) for c in clients]


def _dirichlet_bounds(
    count: int, num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    proportions = rng.dirichlet(np.full(num_clients, alpha))
    if not np.isfinite(proportions).all():  # every gamma draw underflowed: give it all to one
        proportions = np.zeros(num_clients)
        proportions[rng.integers(num_clients)] = 1.0
    cuts = np.minimum((np.cumsum(proportions)[:-1] * count).astype(np.int64), count)
    return np.concatenate([[0], cuts, [count]])


def _top_up(clients: list[np.ndarray], min_size: int, rng: np.random.Generator) -> None:
    """Move random samples from the largest clients until every client holds `min_size`."""
    sizes = np.array([len(c) for c in clients])
    for client in np.flatnonzero(sizes < min_size):
        while len(clients[client]) < min_size:
            donor = int(np.argmax([len(c) for c in clients]))
            count = min(min_size - len(clients[client]), len(clients[donor]) - min_size)
            taken = rng.choice(len(clients[donor]), size=count, replace=False)
            clients[client] = np.concatenate([clients[client], clients[donor][taken]])
            clients[donor] = np.delete(clients[donor], taken)


def partition_shards(
    labels: np.ndarray, num_clients: int, *, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label, cut into `num_clients * shards_per_client` shards, deal shards at random."""
    labels = np.asarray(labels)
    num_shards = num_clients * shards_per_client
    _check_enough_samples(
        len(labels), num_shards, f"{num_clients} clients x {shards_per_client} shards"
    )
    shuffled = rng.permutation(len(labels))  # random order within a label
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in dealt]


def partition(labels: np.ndarray, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(derive_seed("partition", seed))
    if cfg.partitioner == "iid":
        return partition_iid(labels, cfg.num_clients, rng=rng)
    if cfg.partitioner == "dirichlet":
        return partition_dirichlet(labels, cfg.num_clients, alpha=cfg.alpha, rng=rng)
    return partition_shards(
        labels, cfg.num_clients, shards_per_client=cfg.shards_per_client, rng=rng
    )
