"""The steps of one federated round, as plain functions over store keys.

Both the plain-Python engine (`fl.engine`) and the Prefect tasks (`tasks/`) call these, so a
round means the same thing with or without the orchestrator. Steps pass small, JSON-safe values
(keys, checksums, metrics); tensors go through the store and never travel as parameters.

Scratch objects of a round live under `models/<name>/scratch/<run_id>/round-<n>/` and are
removed once the round's version is registered and the checkpoint advanced.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from fl import attacks, training
from fl.config import RunConfig
from fl.data import Federation, load_federation
from fl.errors import (
    AliasMoved,
    ConfigError,
    ObjectNotFound,
    PreconditionFailed,
    RegistryError,
    RoundError,
)
from fl.gating import Candidate, build_gate
from fl.integrity import verify_sha256
from fl.models import build_model, initial_weights
from fl.registry import DEFAULT_ALIAS, Registry, utc_now
from fl.sampling import sample_clients
from fl.serialization import sha256_hex, weights_from_bytes, weights_to_bytes
from fl.store import LocalStore, ObjectStore, open_store
from fl.strategies import build_strategy
from fl.weights import Weights

CHECKPOINT = "checkpoint.json"


class RunContext(BaseModel):
    """Everything a step needs to find its inputs: small and serializable."""

    store_url: str
    model: str
    run_id: str
    config: RunConfig

    def store(self) -> ObjectStore:
        return _open_store(self.store_url, self.config.store.model_dump_json())

    def scratch_store(self) -> ObjectStore:
        """The same store for the round's scratch objects, without fsync where that applies."""
        return _scratch_store(self.store_url, self.config.store.model_dump_json())

    def registry(self) -> Registry:
        return Registry(self.store(), self.model)

    def federation(self) -> Federation:
        return load_federation(self.config.data, self.config.rounds.seed)

    def scratch(self, server_round: int) -> str:
        return f"models/{self.model}/scratch/{self.run_id}/round-{server_round}/"


class TrainingState(BaseModel):
    """Where the next round starts: its weights (by key and checksum) and the round counter."""

    server_round: int  # rounds completed so far for this model
    weights_key: str
    weights_sha256: str
    weights_version: int | None  # registered version the weights are; None for a fresh init
    server_state_key: str | None = None
    server_state_sha256: str | None = None
    source: Literal["checkpoint", "production", "fresh", "rollback"] = "checkpoint"
    updated_at: str | None = None


class ClientResult(BaseModel):
    client_id: int
    num_examples: int
    loss: float
    update_key: str
    sha256: str


class RoundOutcome(BaseModel):
    """The aggregate of a round, written to scratch, plus who contributed and who did not."""

    candidate_key: str
    candidate_sha256: str
    sampled: list[int]
    contributed: list[int]
    failed: dict[int, str]
    refused: dict[int, str]
    attacked: list[int] = []
    server_state_key: str | None = None
    server_state_sha256: str | None = None
    privacy: dict[str, Any] | None = None
    train_loss: float | None = None


@functools.lru_cache(maxsize=16)
def _open_store(url: str, store_config_json: str) -> ObjectStore:
    from fl.config import StoreConfig

    config = StoreConfig.model_validate_json(store_config_json).model_copy(update={"url": url})
    return open_store(config)


@functools.lru_cache(maxsize=16)
def _scratch_store(url: str, store_config_json: str) -> ObjectStore:
    store = _open_store(url, store_config_json)
    if isinstance(store, LocalStore):  # losing scratch in a crash only costs a retried round
        return LocalStore(store.root, durable=False)
    return store


_weights_cache: OrderedDict[tuple[str, str, str], Weights] = OrderedDict()
_weights_lock = threading.Lock()


def load_weights(store: ObjectStore, key: str, sha256: str) -> Weights:
    """Read weights by key, verify the checksum, and keep the last few in memory.

    The same global model is read by every client task of a round: one read per process.
    Callers must not modify the returned tensors.
    """
    cache_key = (store.url, key, sha256)
    with _weights_lock:
        if cache_key in _weights_cache:
            _weights_cache.move_to_end(cache_key)
            return _weights_cache[cache_key]
    data = store.get(key).data
    verify_sha256(data, sha256, f"object {store.uri(key)}")
    weights = weights_from_bytes(data, source=store.uri(key))
    with _weights_lock:
        _weights_cache[cache_key] = weights
        while len(_weights_cache) > 8:
            _weights_cache.popitem(last=False)
    return weights


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("fedship")
    except PackageNotFoundError:
        release = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{release}+g{commit}" if commit else release


def _put_json(store: ObjectStore, key: str, payload: dict[str, Any]) -> None:
    store.put(key, json.dumps(payload, sort_keys=True).encode())


# ----- resume -------------------------------------------------------------------------------
def read_checkpoint(ctx: RunContext) -> tuple[TrainingState, str] | None:
    try:
        obj = ctx.store().get(f"models/{ctx.model}/{CHECKPOINT}")
    except ObjectNotFound:
        return None
    return TrainingState.model_validate_json(obj.data), obj.token


def resume(ctx: RunContext) -> TrainingState:
    """Latest checkpoint of the model, else production, else a fresh initialization."""
    checkpoint = read_checkpoint(ctx)
    registry = ctx.registry()
    production = registry.alias_state(DEFAULT_ALIAS)
    if checkpoint is not None:
        state = _after_rollback(registry, checkpoint[0], production) or checkpoint[0]
        return _check_architecture(ctx, state)
    if production is not None:
        manifest = registry.manifest(int(production["version"]))
        newest = next(registry.iter_versions(), manifest)  # round numbers are never reused
        state = TrainingState(
            server_round=max(int(manifest.get("round", 0)), int(newest.get("round", 0))),
            weights_key=registry.model_key(manifest["version"]),
            weights_sha256=manifest["sha256"],
            weights_version=manifest["version"],
            source="production",
        )
        return _check_architecture(ctx, state)
    fed = ctx.federation()
    weights = initial_weights(
        ctx.config.model, fed.input_dim, fed.num_classes, ctx.config.rounds.seed
    )
    data = weights_to_bytes(weights)
    sha = sha256_hex(data)
    key = f"models/{ctx.model}/checkpoints/init-{sha[:16]}.safetensors"
    store = ctx.store()
    with contextlib.suppress(PreconditionFailed):  # an earlier run wrote the same init
        store.put_if_absent(key, data)
    return TrainingState(
        server_round=0, weights_key=key, weights_sha256=sha, weights_version=None, source="fresh"
    )


def _check_architecture(ctx: RunContext, state: TrainingState) -> TrainingState:
    """Refuse, in one line, a config whose model does not fit the weights training resumes."""
    fed = ctx.federation()
    fresh = initial_weights(ctx.config.model, fed.input_dim, fed.num_classes, 0)
    stored = load_weights(ctx.store(), state.weights_key, state.weights_sha256)
    for name, tensor in fresh.items():
        have = stored.get(name)
        if have is None or tuple(have.shape) != tuple(tensor.shape):
            found = "missing" if have is None else f"shape {tuple(have.shape)}"
            raise ConfigError(
                f"model {ctx.model!r} resumes from weights whose tensor {name!r} is {found}, but "
                f"the configured model (model.* and data.*) needs {tuple(tensor.shape)}; keep "
                "the architecture or train under a new --model name"
            )
    return state


def _after_rollback(
    registry: Registry, checkpoint: TrainingState, production: dict[str, Any] | None
) -> TrainingState | None:
    """If production was rolled back after the checkpoint was written, training resumes from
    the version production went back to, so the next round does not undo the rollback. The
    round counter and server state (optimizer moments, privacy accounting) carry on."""
    history = (production or {}).get("history", [])
    if not history or history[-1]["action"] != "rollback":
        return None
    if checkpoint.updated_at is not None and history[-1]["at"] <= checkpoint.updated_at:
        return None
    version = int(history[-1]["to"])
    if checkpoint.weights_version == version:
        return None
    return checkpoint.model_copy(
        update={
            "weights_key": registry.model_key(version),
            "weights_sha256": registry.manifest(version)["sha256"],
            "weights_version": version,
            "source": "rollback",
        }
    )


# ----- sample and train ---------------------------------------------------------------------
def sample(ctx: RunContext, server_round: int) -> list[int]:
    rounds = ctx.config.rounds
    return sample_clients(
        ctx.config.data.num_clients,
        rounds.clients_per_round,
        seed=rounds.seed,
        server_round=server_round,
    )


def cohorts(client_ids: Sequence[int], clients_per_task: int) -> list[list[int]]:
    """Split the sampled clients into the groups one task trains (0 means one client a task)."""
    size = clients_per_task or 1
    return [list(client_ids[i : i + size]) for i in range(0, len(client_ids), size)]


def simulated_dropout(
    seed: int, server_round: int, client_id: int, attempt: int, rate: float
) -> bool:
    """Seeded coin flip per attempt: a retried client may come back, as a flaky one would."""
    if rate <= 0:
        return False
    digest = hashlib.sha256(
        f"dropout:{seed}:{server_round}:{client_id}:{attempt}".encode()
    ).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


class ClientTrainingError(RoundError):
    """Some clients of a training task failed; the others' updates are already in scratch."""

    def __init__(self, errors: dict[int, str]) -> None:
        self.errors = errors
        detail = "; ".join(f"client {cid}: {msg}" for cid, msg in errors.items())
        super().__init__(f"{len(errors)} client(s) failed: {detail}")


def _write_update(
    ctx: RunContext, store: ObjectStore, server_round: int, update: training.ClientUpdate
) -> ClientResult:
    """The update first, then its result record: a result exists only with its update."""
    data = weights_to_bytes(update.weights)
    key = f"{ctx.scratch(server_round)}client-{update.client_id}.safetensors"
    store.put(key, data)
    result = ClientResult(
        client_id=update.client_id,
        num_examples=update.num_examples,
        loss=float(update.loss),
        update_key=key,
        sha256=sha256_hex(data),
    )
    store.put(_result_key(ctx, server_round, update.client_id), result.model_dump_json().encode())
    return result


def _result_key(ctx: RunContext, server_round: int, client_id: int) -> str:
    return f"{ctx.scratch(server_round)}client-{client_id}.json"


def train_clients(
    ctx: RunContext,
    state: TrainingState,
    server_round: int,
    client_ids: Sequence[int],
    attempt: int = 1,
) -> list[ClientResult]:
    """Train a cohort from the round's global weights; write each update to scratch.

    Idempotent: a client whose update is already in scratch (an earlier attempt) is skipped,
    so a retried task trains only the clients that failed. Raises `ClientTrainingError` after
    training every client it could if any of them failed.
    """
    store = ctx.scratch_store()
    results: list[ClientResult] = []
    todo: list[int] = []
    for client_id in client_ids:
        try:
            results.append(
                ClientResult.model_validate_json(
                    store.get(_result_key(ctx, server_round, client_id)).data
                )
            )
        except ObjectNotFound:
            todo.append(client_id)
    errors: dict[int, str] = {}
    rate = ctx.config.rounds.dropout_rate
    seed = ctx.config.rounds.seed
    for client_id in list(todo):
        if simulated_dropout(seed, server_round, client_id, attempt, rate):
            errors[client_id] = f"simulated dropout (rounds.dropout_rate={rate}, attempt {attempt})"
            todo.remove(client_id)
    if todo:
        fed = ctx.federation()
        global_weights = load_weights(ctx.store(), state.weights_key, state.weights_sha256)
        model = build_model(ctx.config.model, fed.input_dim, fed.num_classes)
        from fl.combine import client_config

        mu = float(client_config(ctx, server_round).get("proximal_mu", 0.0))
        for client_id in todo:  # one at a time: a failing client costs only its own update
            try:
                (update,) = training.train_cohort(
                    model, global_weights, [fed.client(client_id)], ctx.config.train,
                    seed=seed, server_round=server_round, proximal_mu=mu,
                )  # fmt: skip
            except Exception as err:
                errors[client_id] = f"{type(err).__name__}: {err}"
                continue
            results.append(_write_update(ctx, store, server_round, update))
    if errors:
        raise ClientTrainingError(errors)
    return sorted(results, key=lambda r: r.client_id)


# ----- aggregate ----------------------------------------------------------------------------
def _server_state(ctx: RunContext, state: TrainingState) -> dict[str, np.ndarray]:
    if not state.server_state_key or not state.server_state_sha256:
        return {}
    from safetensors.numpy import load as load_numpy

    data = ctx.store().get(state.server_state_key).data
    verify_sha256(data, state.server_state_sha256, f"server state {state.server_state_key}")
    return dict(load_numpy(data))


def _collect(
    ctx: RunContext, server_round: int, sampled: Sequence[int], errors: dict[int, str]
) -> tuple[list[ClientResult], dict[int, str]]:
    store = ctx.scratch_store()
    found: list[ClientResult] = []
    failed: dict[int, str] = {}
    for client_id in sampled:
        try:
            found.append(
                ClientResult.model_validate_json(
                    store.get(_result_key(ctx, server_round, client_id)).data
                )
            )
        except ObjectNotFound:
            failed[client_id] = errors.get(client_id, "no update received")
    return found, failed


def aggregate(
    ctx: RunContext,
    state: TrainingState,
    server_round: int,
    sampled: Sequence[int],
    errors: dict[int, str] | None = None,
) -> RoundOutcome:
    """Combine the updates found in scratch into the round's candidate model.

    Plain weighted strategies stream updates one at a time (memory O(model size)); robust
    strategies, differential privacy, attack simulation and relative screening need them all.
    """
    from fl.combine import combine

    store = ctx.store()
    results, failed = _collect(ctx, server_round, sampled, errors or {})
    from fl.combine import load_strategy

    needed = load_strategy(ctx).min_updates()
    minimum = max(ctx.config.rounds.min_fit_clients, needed)
    need = f"rounds.min_fit_clients is {ctx.config.rounds.min_fit_clients}" + (
        f" and strategy {ctx.config.strategy.name} needs {needed}" if needed > 1 else ""
    )

    def too_few(valid: int, refused: int) -> RoundError:
        remove_scratch(ctx, server_round)  # a failed round leaves nothing behind
        return RoundError(
            f"round {server_round}: only {valid} of {len(sampled)} sampled clients gave a valid "
            f"update ({len(failed)} failed, {refused} refused); {need}"
        )

    if len(results) < minimum:
        raise too_few(len(results), 0)
    global_weights = load_weights(store, state.weights_key, state.weights_sha256)
    server_state = _server_state(ctx, state)
    outcome = combine(ctx, server_round, global_weights, results, server_state, failed)
    if len(outcome.contributed) < minimum:
        raise too_few(len(outcome.contributed), len(outcome.refused))
    return outcome


def load_update(store: ObjectStore, result: ClientResult) -> Weights:
    data = store.get(result.update_key).data
    verify_sha256(data, result.sha256, f"update of client {result.client_id}")
    return weights_from_bytes(data, source=f"update of client {result.client_id}")


def write_candidate(ctx: RunContext, server_round: int, weights: Weights) -> tuple[str, str]:
    data = weights_to_bytes(weights)
    key = f"{ctx.scratch(server_round)}candidate.safetensors"
    ctx.scratch_store().put(key, data)
    return key, sha256_hex(data)


def write_server_state(
    ctx: RunContext, server_round: int, arrays: dict[str, np.ndarray]
) -> tuple[str | None, str | None]:
    if not arrays:
        return None, None
    from safetensors.numpy import save as save_numpy

    data = save_numpy({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    key = f"models/{ctx.model}/checkpoints/state-{ctx.run_id}-r{server_round}.safetensors"
    ctx.store().put(key, data)
    return key, sha256_hex(data)


# ----- evaluate, gate, register, promote, advance ---------------------------------------------
def evaluate(ctx: RunContext, key: str, sha256: str) -> dict[str, Any]:
    fed = ctx.federation()
    weights = load_weights(ctx.store(), key, sha256)
    model = build_model(ctx.config.model, fed.input_dim, fed.num_classes)
    result = training.evaluate(model, weights, fed.holdout_x, fed.holdout_y, fed.num_classes)
    return result.to_dict()


def production_info(
    registry: Registry, alias: str = DEFAULT_ALIAS
) -> tuple[int | None, dict[str, Any] | None]:
    state = registry.alias_state(alias)
    if state is None:
        return None, None
    version = int(state["version"])
    return version, registry.manifest(version).get("metrics")


def gate(ctx: RunContext, metrics: dict[str, Any], outcome: RoundOutcome) -> dict[str, Any]:
    """The gate's decision on a candidate against what production serves now."""
    version, production_metrics = production_info(ctx.registry())
    decision = build_gate(ctx.config.gate, ctx.config.rounds.min_fit_clients)(
        Candidate(
            metrics=metrics,
            production_metrics=production_metrics,
            production_version=version,
            num_clients=len(outcome.contributed),
            privacy=outcome.privacy,
            attack=attack_record(ctx) if outcome.attacked else None,
        )
    )
    return {**decision.to_dict(), "production_version": version}


def attack_record(ctx: RunContext) -> dict[str, Any] | None:
    return attacks.attack_record(ctx.config.attack)


def register(
    ctx: RunContext,
    state: TrainingState,
    server_round: int,
    outcome: RoundOutcome,
    metrics: dict[str, Any],
    decision: dict[str, Any],
) -> dict[str, Any]:
    """Register the candidate as a new version whose manifest records lineage and the gate."""
    store = ctx.scratch_store()
    marker = f"{ctx.scratch(server_round)}registered.json"
    try:  # a retry after a registration whose reply was lost must not register twice
        return ctx.registry().manifest(int(json.loads(store.get(marker).data)["version"]))
    except ObjectNotFound:
        pass
    data = store.get(outcome.candidate_key).data
    verify_sha256(data, outcome.candidate_sha256, f"candidate of round {server_round}")
    fields = {
        "round": server_round,
        "parent_version": state.weights_version,
        "config": ctx.config.fingerprint_payload(),
        "partition_fingerprint": ctx.federation().fingerprint,
        "code_version": code_version(),
        "gate": decision,
        "clients": {
            "sampled": outcome.sampled,
            "contributed": outcome.contributed,
            "failed": {str(k): v for k, v in outcome.failed.items()},
            "refused": {str(k): v for k, v in outcome.refused.items()},
            "attacked": outcome.attacked,
        },
        "train_loss": outcome.train_loss,
        "strategy": build_strategy(ctx.config.strategy).describe(),
        "privacy": outcome.privacy,
        "attack": attack_record(ctx),
    }
    manifest = ctx.registry().register_bytes(
        data, run_id=ctx.run_id, metrics=metrics, fields=fields
    )
    _put_json(store, marker, {"version": manifest["version"]})
    return manifest


def promote(ctx: RunContext, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Promote a version the gate passed; returns the alias change, or None if it was not.

    The alias moves only if production is still the version the gate compared against: a
    rollback or promotion made meanwhile is not silently overridden. A retried call (same run
    and round) completes the same change instead of making a second one.
    """
    if not manifest["gate"]["passed"]:
        return None
    accuracy = manifest["metrics"]["accuracy"]
    try:
        change = ctx.registry().promote(
            manifest["version"],
            actor=f"run {ctx.run_id}",
            reason=f"gate passed in round {manifest['round']} (accuracy {accuracy:.4f})",
            request_id=f"{ctx.run_id}:round-{manifest['round']}:promote",
            expected_from=manifest["gate"].get("production_version"),
        )
    except AliasMoved:
        return None
    return change.to_dict()


def advance(
    ctx: RunContext, state: TrainingState, manifest: dict[str, Any], outcome: RoundOutcome
) -> TrainingState:
    """Choose the next round's weights, move the checkpoint forward, drop the round's scratch.

    A rejected candidate is dropped for production's weights under `gate.on_reject: revert`
    (the tutorial's behaviour) when a production version exists; otherwise training goes on
    from the candidate.
    """
    registry = ctx.registry()
    version = int(manifest["version"])
    if not manifest["gate"]["passed"] and ctx.config.gate.on_reject == "revert":
        production = registry.alias_state(DEFAULT_ALIAS)
        if production is not None:
            version = int(production["version"])
    chosen = registry.manifest(version)
    new_state = TrainingState(
        server_round=int(manifest["round"]),
        weights_key=registry.model_key(version),
        weights_sha256=chosen["sha256"],
        weights_version=version,
        server_state_key=outcome.server_state_key or state.server_state_key,
        server_state_sha256=outcome.server_state_sha256 or state.server_state_sha256,
        updated_at=utc_now(),
    )
    write_checkpoint(ctx, new_state)
    superseded = state.server_state_key
    if superseded and superseded != new_state.server_state_key:
        ctx.store().delete(superseded)  # optimizer moments of an older round: no longer needed
    return new_state


def finish_round(
    ctx: RunContext, state: TrainingState, manifest: dict[str, Any], outcome: RoundOutcome
) -> tuple[dict[str, Any] | None, TrainingState]:
    """The round's last step: advance the checkpoint, promote if the gate passed, clean up.

    The checkpoint moves first, by compare-and-swap: of two runs resumed from one checkpoint,
    the one that loses stops here, before it could promote anything.
    """
    new_state = advance(ctx, state, manifest, outcome)
    change = promote(ctx, manifest)
    remove_scratch(ctx, int(manifest["round"]))
    return change, new_state


def _same_point(a: TrainingState, b: TrainingState) -> bool:
    keys = ("server_round", "weights_key", "weights_sha256", "server_state_key")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def write_checkpoint(ctx: RunContext, new_state: TrainingState) -> None:
    """Compare-and-swap the checkpoint forward; never move it back to an older round."""
    store = ctx.store()
    key = f"models/{ctx.model}/{CHECKPOINT}"
    payload = new_state.model_dump_json().encode()
    for _ in range(64):
        current = read_checkpoint(ctx)
        try:
            if current is None:
                store.put_if_absent(key, payload)
            elif _same_point(current[0], new_state):
                return  # a retried step that had already succeeded
            elif current[0].server_round >= new_state.server_round:
                raise RoundError(
                    f"model {ctx.model!r} was advanced to round {current[0].server_round} by "
                    f"another run while this run finished round {new_state.server_round}"
                )
            else:
                store.put_if_match(key, payload, current[1])
            return
        except PreconditionFailed:
            continue
    raise RegistryError(f"checkpoint of model {ctx.model!r} is changing too fast; retry")


def remove_scratch(ctx: RunContext, server_round: int) -> None:
    store = ctx.scratch_store()
    for key in list(store.list(ctx.scratch(server_round))):
        store.delete(key)
