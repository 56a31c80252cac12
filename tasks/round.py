"""Prefect tasks for the steps of a round: thin wrappers over `fl.rounds`.

Each adds only what Prefect adds: a run name showing the round (and clients), retries with
backoff on the steps that do I/O, a timeout. Parameters and results are keys, checksums and
metrics; tensors stay in the store.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from fl import rounds as steps
from fl.rounds import ClientResult, RoundOutcome, RunContext, TrainingState
from tasks.retry import IO

CLIENT_RETRIES = 2
# No timeout on training: mapped tasks run in worker threads, where Prefect cannot interrupt
# them (it warns on every run). Bound client time with a process-based task runner instead.


def _attempt() -> int:
    context = TaskRunContext.get()
    return context.task_run.run_count if context and context.task_run else 1


@task(name="resume", task_run_name="resume {ctx.model}", cache_policy=NO_CACHE, **IO)
def resume(ctx: RunContext) -> TrainingState:
    return steps.resume(ctx)


@task(name="sample-clients", task_run_name="sample round {server_round}", cache_policy=NO_CACHE)
def sample_clients(ctx: RunContext, server_round: int) -> list[int]:
    return steps.sample(ctx, server_round)


@task(
    name="train-clients",
    task_run_name="train round {server_round} clients {client_ids}",
    retries=CLIENT_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
    retry_jitter_factor=0.2,
    cache_policy=NO_CACHE,
)
def train_clients(
    ctx: RunContext, state: TrainingState, server_round: int, client_ids: list[int]
) -> list[ClientResult]:
    """Retried as a whole; clients already done by an earlier attempt are not trained again."""
    return steps.train_clients(ctx, state, server_round, client_ids, attempt=_attempt())


@task(
    name="aggregate",
    task_run_name="aggregate round {server_round}",
    **IO,
)
def aggregate(
    ctx: RunContext,
    state: TrainingState,
    server_round: int,
    sampled: list[int],
    errors: dict[int, str],
) -> RoundOutcome:
    return steps.aggregate(ctx, state, server_round, sampled, errors)


@task(
    name="evaluate",
    task_run_name="evaluate round {server_round}",
    **IO,
)
def evaluate(ctx: RunContext, server_round: int, outcome: RoundOutcome) -> dict[str, Any]:
    return steps.evaluate(ctx, outcome.candidate_key, outcome.candidate_sha256)


@task(
    name="gate",
    task_run_name="gate round {server_round}",
    **IO,
)
def gate(
    ctx: RunContext, server_round: int, metrics: dict[str, Any], outcome: RoundOutcome
) -> dict[str, Any]:
    return steps.gate(ctx, metrics, outcome)


@task(
    name="register",
    task_run_name="register round {server_round}",
    **IO,
)
def register(
    ctx: RunContext,
    state: TrainingState,
    server_round: int,
    outcome: RoundOutcome,
    metrics: dict[str, Any],
    decision: dict[str, Any],
) -> dict[str, Any]:
    return steps.register(ctx, state, server_round, outcome, metrics, decision)


@task(
    name="promote",
    task_run_name="promote round {server_round}",
    **IO,
)
def promote(
    ctx: RunContext,
    state: TrainingState,
    server_round: int,
    manifest: dict[str, Any],
    outcome: RoundOutcome,
) -> tuple[dict[str, Any] | None, TrainingState]:
    """Move the checkpoint on, promote when the gate passed, drop the round's scratch."""
    return steps.finish_round(ctx, state, manifest, outcome)
