"""Training runs without an orchestrator: the same round steps as the Prefect flow, in a loop.

Use it in notebooks, tests and benchmarks; `flows.training.federated_training` runs the very same
steps (`fl.rounds`) as Prefect tasks.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel

from fl import rounds as steps
from fl.config import RunConfig
from fl.registry import DEFAULT_ALIAS


class RoundRecord(BaseModel):
    round: int
    version: int
    accuracy: float
    loss: float
    gate_passed: bool
    reasons: list[str]
    rejected_by: list[str]
    promoted: bool
    contributed: list[int]
    failed: dict[int, str]
    refused: dict[int, str]


class RunSummary(BaseModel):
    run_id: str
    model: str
    store: str
    rounds_completed: int
    first_round: int | None
    last_round: int | None
    resumed_from: str
    versions_registered: list[int]
    versions_promoted: list[int]
    production: int | None
    final_accuracy: float | None
    rounds: list[RoundRecord]

    PUBLIC_FIELDS: ClassVar[tuple[str, ...]] = (
        "run_id", "rounds_completed", "versions_registered", "versions_promoted", "production",
        "final_accuracy",
    )  # fmt: skip
    """What `fedship train --json` prints."""


def new_run_id() -> str:
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def round_record(manifest: dict[str, Any], change: dict[str, Any] | None) -> RoundRecord:
    clients = manifest["clients"]
    return RoundRecord(
        round=manifest["round"],
        version=manifest["version"],
        accuracy=manifest["metrics"]["accuracy"],
        loss=manifest["metrics"]["loss"],
        gate_passed=manifest["gate"]["passed"],
        reasons=manifest["gate"]["reasons"],
        rejected_by=[c["reason"] for c in manifest["gate"]["checks"] if not c["passed"]],
        promoted=change is not None and bool(change.get("changed")),
        contributed=clients["contributed"],
        failed={int(k): v for k, v in clients["failed"].items()},
        refused={int(k): v for k, v in clients["refused"].items()},
    )


def summarize(
    ctx: steps.RunContext, state: steps.TrainingState, records: list[RoundRecord]
) -> RunSummary:
    production = ctx.registry().alias_state(DEFAULT_ALIAS)
    return RunSummary(
        run_id=ctx.run_id,
        model=ctx.model,
        store=ctx.store_url,
        rounds_completed=len(records),
        first_round=records[0].round if records else None,
        last_round=records[-1].round if records else None,
        resumed_from=state.source,
        versions_registered=[r.version for r in records],
        versions_promoted=[r.version for r in records if r.promoted],
        production=None if production is None else int(production["version"]),
        final_accuracy=records[-1].accuracy if records else None,
        rounds=records,
    )


def run_training(
    config: RunConfig,
    *,
    model: str = "default",
    store_url: str | None = None,
    run_id: str | None = None,
    client_retries: int = 2,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> RunSummary:
    """Run `config.rounds.per_run` rounds, resuming from the model's checkpoint if it has one."""
    ctx = steps.RunContext(
        store_url=store_url or config.store.resolved_url(),
        model=model,
        run_id=run_id or new_run_id(),
        config=config,
    )
    start = state = steps.resume(ctx)
    records: list[RoundRecord] = []
    for server_round in range(
        state.server_round + 1, state.server_round + config.rounds.per_run + 1
    ):
        sampled = steps.sample(ctx, server_round)
        errors: dict[int, str] = {}
        for cohort in steps.cohorts(sampled, config.rounds.clients_per_task):
            for attempt in range(1, client_retries + 2):
                try:
                    steps.train_clients(ctx, state, server_round, cohort, attempt)
                    break
                except steps.ClientTrainingError as err:
                    errors.update(err.errors)
        outcome = steps.aggregate(ctx, state, server_round, sampled, errors)
        metrics = steps.evaluate(ctx, outcome.candidate_key, outcome.candidate_sha256)
        decision = steps.gate(ctx, metrics, outcome)
        manifest = steps.register(ctx, state, server_round, outcome, metrics, decision)
        change, state = steps.finish_round(ctx, state, manifest, outcome)
        records.append(round_record(manifest, change))
        if on_round is not None:
            on_round(records[-1])
    return summarize(ctx, start, records)
