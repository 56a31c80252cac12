"""Simulated Byzantine clients, to test that screening and robust strategies hold up.

Each round, `num_clients` of the round's updates are chosen by a generator seeded from
(seed, server_round) over the updates sorted by client id, so the choice does not depend on the
order results arrived in, and is the same on a rerun. The chosen deltas are replaced:
- `sign_flip`: delta -> -scale * delta (pushes the model away from where honest clients go);
- `gaussian`: delta -> N(0, sigma^2 I) with sigma = scale * std(that client's honest delta), or
  sigma = scale when the honest delta is constant (std 0). Scaling by the honest spread keeps
  the attack meaningful whatever the model's size or learning rate.
If a round has fewer updates than `num_clients` (dropouts), every update is attacked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from fl.config import AttackConfig
from fl.strategies.base import FlatUpdate

# Mixed into the seed so attack randomness is independent of any other use of the run seed.
_ATTACK_STREAM = 0xA77AC


def _corrupt(update: FlatUpdate, cfg: AttackConfig, *, seed: int, server_round: int) -> FlatUpdate:
    honest = np.asarray(update.delta)
    if cfg.kind == "sign_flip":
        corrupted = -cfg.scale * honest.astype(np.float64)
    else:
        rng = np.random.default_rng([_ATTACK_STREAM, seed, server_round, update.client_id, 1])
        spread = float(np.std(honest, dtype=np.float64))
        sigma = cfg.scale * (spread if spread > 0 else 1.0)
        corrupted = rng.normal(0.0, sigma, size=honest.shape)
    return dataclasses.replace(update, delta=corrupted.astype(honest.dtype))


def choose_attackers(
    client_ids: Sequence[int], num_clients: int, *, seed: int, server_round: int
) -> list[int]:
    """The attacked client ids (sorted): a seeded choice among the round's clients."""
    candidates = sorted(client_ids)
    count = min(num_clients, len(candidates))
    rng = np.random.default_rng([_ATTACK_STREAM, seed, server_round, 0])
    chosen = rng.choice(len(candidates), size=count, replace=False)
    return sorted(candidates[i] for i in chosen)


def apply_attack(
    updates: Sequence[FlatUpdate], cfg: AttackConfig, *, seed: int, server_round: int
) -> tuple[list[FlatUpdate], list[int]]:
    """The round's updates with the chosen ones corrupted (same order), and their client ids.

    The inputs are not modified; corrupted updates are new `FlatUpdate`s.
    """
    if cfg.kind is None or cfg.num_clients == 0 or not updates:
        return list(updates), []
    attacked = set(
        choose_attackers(
            [u.client_id for u in updates], cfg.num_clients, seed=seed, server_round=server_round
        )
    )
    result = [
        _corrupt(u, cfg, seed=seed, server_round=server_round) if u.client_id in attacked else u
        for u in updates
    ]
    return result, sorted(attacked)


def attack_record(cfg: AttackConfig) -> dict[str, Any] | None:
    """What a manifest records about the simulated attack, or None when there is none."""
    if cfg.kind is None or cfg.num_clients == 0:
        return None
    record: dict[str, Any] = {
        "kind": cfg.kind,
        "num_clients": cfg.num_clients,
        "scale": cfg.scale,
        "selection": "seeded by (seed, server_round) among the round's clients sorted by id",
    }
    if cfg.kind == "sign_flip":
        record["effect"] = "delta replaced by -scale * delta"
    else:
        record["effect"] = (
            "delta replaced by N(0, sigma^2) noise, sigma = scale * std of the client's honest "
            "delta (scale * 1.0 if that std is 0)"
        )
    return record
