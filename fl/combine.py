"""Combine a round's client updates into the candidate model.

Order, as updates would arrive in a real deployment: simulated attackers corrupt their deltas,
screening refuses malformed or outsized ones, then differential privacy (clip + noise) or the
configured strategy combines the rest, and the strategy's server optimizer takes its step.

Weighted-mean strategies with no attack, no privacy and no relative screening read updates one
at a time (memory O(model size)); everything else holds the round's deltas in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fl import training
from fl.aggregation import WeightedMean
from fl.attacks import apply_attack
from fl.errors import AggregationError
from fl.privacy import PrivacyAccountant, dp_aggregate, privacy_record
from fl.screening import screen_updates
from fl.strategies import FlatUpdate, Strategy, build_strategy
from fl.weights import Weights, check_compatible, flatten, unflatten

if TYPE_CHECKING:
    from fl.rounds import ClientResult, RoundOutcome, RunContext

STRATEGY_PREFIX = "strategy."
PRIVACY_PREFIX = "privacy."
UNACCOUNTED = "lineage.unaccounted_rounds"
UNACCOUNTED_NOTE = (
    "the model's lineage includes rounds without differential-privacy accounting, so no finite "
    "(epsilon, delta) guarantee holds for it"
)


def round_rng(seed: int, server_round: int, purpose: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{purpose}:{seed}:{server_round}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _split_state(state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def load_strategy(ctx: RunContext, server_state: dict[str, np.ndarray] | None = None) -> Strategy:
    strategy = build_strategy(
        ctx.config.strategy, clients_per_round=ctx.config.rounds.clients_per_round
    )
    if server_state:
        strategy.load_state_dict(_split_state(server_state, STRATEGY_PREFIX))
    return strategy


def client_config(ctx: RunContext, server_round: int) -> dict[str, float]:
    """What the strategy asks of every client this round (FedProx's proximal mu)."""
    return build_strategy(ctx.config.strategy).configure_train(server_round)


def _streams(ctx: RunContext, strategy: Strategy) -> bool:
    cfg = ctx.config
    attacked = cfg.attack.kind is not None and cfg.attack.num_clients > 0
    return not (
        strategy.robust
        or attacked
        or cfg.privacy.clip_norm is not None
        or cfg.screening.max_norm_factor is not None
    )


def _checked_updates(
    ctx: RunContext,
    results: Sequence[ClientResult],
    global_weights: Weights,
    global_vec: np.ndarray,
    refused: dict[int, str],
) -> Iterator[tuple[ClientResult, Weights, FlatUpdate]]:
    """Updates read one at a time; one whose tensors do not match the model is refused."""
    from fl.rounds import load_update

    store = ctx.scratch_store()
    for result in results:
        weights = load_update(store, result)
        try:
            check_compatible(weights, global_weights, result.client_id)
        except AggregationError as err:
            refused[result.client_id] = str(err)
            continue
        in_model_order = {name: weights[name] for name in global_weights}
        delta = flatten(in_model_order) - global_vec
        yield result, weights, FlatUpdate(result.client_id, delta, result.num_examples)


def _streamed_mean(
    ctx: RunContext,
    results: Sequence[ClientResult],
    global_weights: Weights,
    global_vec: np.ndarray,
    refused: dict[int, str],
) -> WeightedMean:
    """FedAvg's weighted mean in O(model size): each update is screened, added, dropped."""
    mean = WeightedMean(global_weights)
    updates = _checked_updates(ctx, results, global_weights, global_vec, refused)
    for result, weights, flat in updates:
        _, refusals = screen_updates([flat], ctx.config.screening, global_vec.size)
        if refusals:
            refused[result.client_id] = refusals[0].reason
            continue
        mean.add(training.ClientUpdate(result.client_id, weights, result.num_examples, result.loss))
    return mean


def combine(
    ctx: RunContext,
    server_round: int,
    global_weights: Weights,
    results: Sequence[ClientResult],
    server_state: dict[str, np.ndarray],
    failed: dict[int, str],
) -> RoundOutcome:
    from fl.rounds import RoundOutcome, write_candidate, write_server_state

    cfg = ctx.config
    strategy = load_strategy(ctx, server_state)
    global_vec = flatten(global_weights)
    refused: dict[int, str] = {}
    attacked: list[int] = []
    privacy = None
    state_out: dict[str, np.ndarray] = {}
    if _streams(ctx, strategy):
        mean = _streamed_mean(ctx, results, global_weights, global_vec, refused)
        contributed = [r.client_id for r in results if r.client_id not in refused]
        if not contributed:
            candidate = global_weights
        elif strategy.name in ("fedavg", "fedprox") and strategy.server_lr == 1.0:
            candidate = mean.result()  # exact FedAvg, no round trip through a delta
        else:
            delta = flatten(mean.result()) - global_vec
            candidate = unflatten(strategy.apply(server_round, global_vec, delta), global_weights)
    else:
        deltas = [
            flat
            for _, _, flat in _checked_updates(ctx, results, global_weights, global_vec, refused)
        ]
        deltas, attacked = apply_attack(
            deltas, cfg.attack, seed=cfg.rounds.seed, server_round=server_round
        )
        accepted, refusals = screen_updates(deltas, cfg.screening, global_vec.size)
        refused.update({r.client_id: r.reason for r in refusals})
        contributed = [u.client_id for u in accepted]
        if len(accepted) < max(cfg.rounds.min_fit_clients, strategy.min_updates()):
            candidate = global_weights  # aggregate() refuses such a round with a clear message
        else:
            if cfg.privacy.clip_norm is not None:
                rng = round_rng(cfg.rounds.seed, server_round, "dp-noise")
                aggregate_delta = dp_aggregate(  # fixed denominator, as DP-FedAvg requires
                    accepted,
                    cfg.privacy.clip_norm,
                    cfg.privacy.noise_multiplier,
                    rng,
                    denominator=cfg.rounds.clients_per_round,
                )
            else:
                aggregate_delta = strategy.aggregate_deltas(server_round, accepted)
            new_vec = strategy.apply(server_round, global_vec, aggregate_delta)
            candidate = unflatten(new_vec, global_weights)
    if cfg.privacy.clip_norm is not None and contributed:
        accountant = PrivacyAccountant(
            cfg.privacy.noise_multiplier,
            cfg.rounds.clients_per_round / cfg.data.num_clients,
            cfg.privacy.delta,
        )
        accounted = _split_state(server_state, PRIVACY_PREFIX)
        accountant.load_state_dict(accounted)
        accountant.step()
        privacy = privacy_record(accountant, cfg.privacy.clip_norm)
        state_out.update({PRIVACY_PREFIX + k: v for k, v in accountant.state_dict().items()})
        # Rounds before this one that the accountant never saw (DP switched on mid-lineage, or
        # a resume from production without its checkpoint) void any finite guarantee.
        if UNACCOUNTED in server_state or (not accounted and server_round > 1):
            privacy = {**privacy, "epsilon": None, "epsilon_note": UNACCOUNTED_NOTE}
            state_out[UNACCOUNTED] = np.array([1], dtype=np.int64)
    state_out.update({STRATEGY_PREFIX + k: v for k, v in strategy.state_dict().items()})
    candidate_key, candidate_sha = write_candidate(ctx, server_round, candidate)
    state_key, state_sha = write_server_state(ctx, server_round, state_out)
    kept = set(contributed)
    losses = [r.loss for r in results if r.client_id in kept]
    return RoundOutcome(
        candidate_key=candidate_key,
        candidate_sha256=candidate_sha,
        sampled=sorted([r.client_id for r in results] + list(failed)),
        contributed=sorted(contributed),
        failed=failed,
        refused=refused,
        attacked=sorted(attacked),
        server_state_key=state_key,
        server_state_sha256=state_sha,
        privacy=privacy,
        train_loss=float(np.mean(losses)) if losses else None,
    )
