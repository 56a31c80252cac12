"""Which clients train in a round, and the seeds of every other random stream.

Every random choice in Fedship derives from the run seed through `derive_seed`, a SHA-256 of
the seed and a label, so a stream never depends on how many draws another stream made, and
Python's per-process salted `hash` never enters.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fl.errors import ConfigError

_SEED_BITS = 63  # fits torch.Generator.manual_seed and numpy's SeedSequence


def derive_seed(*parts: int | str) -> int:
    """A stable non-negative 63-bit seed from labelled parts, e.g. ("client", 42, 3, 7)."""
    text = "/".join(str(part) for part in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _SEED_BITS)


def sample_clients(num_clients: int, k: int, *, seed: int, server_round: int) -> list[int]:
    """`k` distinct client ids out of `range(num_clients)`, sorted, the same for a (seed, round)."""
    if num_clients < 0 or not 0 <= k <= num_clients:
        raise ConfigError(
            f"cannot sample {k} clients out of {num_clients}; "
            "k must lie between 0 and the number of clients"
        )
    rng = np.random.default_rng(derive_seed("sample_clients", seed, server_round))
    chosen = rng.choice(num_clients, size=k, replace=False)
    return sorted(int(client_id) for client_id in chosen)
