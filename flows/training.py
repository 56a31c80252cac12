"""`federated_training`: the training flow. It resumes where the model's last run stopped."""

from __future__ import annotations

import logging
import os
from typing import Any, TypeVar, cast

from prefect import flow, get_run_logger, unmapped
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from fl.config import RunConfig, load_config
from fl.engine import RoundRecord, new_run_id, round_record, summarize
from fl.rounds import ClientTrainingError, RunContext, cohorts
from tasks import round as round_tasks

# The CLI listens here to draw its progress bar; every round record is logged to it.
ROUND_EVENTS = logging.getLogger("fedship.rounds")
ROUND_EVENTS.propagate = False


T = TypeVar("T")


def _q(value: T) -> T:
    """`quote` a resolved value so Prefect does not walk it looking for futures."""
    return cast(T, quote(value))


def max_workers() -> int:
    return int(os.environ.get("FEDSHIP_MAX_WORKERS", max(2, os.cpu_count() or 2)))


def build_run_config(
    preset: str | None, config_file: str | None, rounds: int | None, overrides: list[str] | None
) -> RunConfig:
    settings = list(overrides or [])
    if rounds is not None:
        settings.append(f"rounds.per_run={rounds}")
    return load_config(preset=preset, config_file=config_file, overrides=settings)


def _errors(futures: list[PrefectFuture[Any]], groups: list[list[int]]) -> dict[int, str]:
    """Per-client error messages of the training tasks that failed after their retries."""
    errors: dict[int, str] = {}
    for future, group in zip(futures, groups, strict=True):
        future.wait()
        if future.state.is_completed():
            continue
        error = future.state.result(raise_on_failure=False)
        if isinstance(error, ClientTrainingError):
            errors.update(error.errors)
        else:
            errors.update({cid: f"{future.state.name}: {error}" for cid in group})
    return errors


def _emit(kind: str, model: str, record: RoundRecord, run_id: str) -> None:
    emit_event(
        event=f"fedship.version.{kind}",
        resource={"prefect.resource.id": f"fedship.model.{model}", "fedship.model": model},
        payload={"run_id": run_id, **record.model_dump(mode="json")},
    )


@flow(
    name="federated-training",
    flow_run_name="train-{model}",
    task_runner=ThreadPoolTaskRunner(max_workers=max_workers()),  # type: ignore[arg-type]
    validate_parameters=True,
)
def federated_training(
    model: str = "default",
    store: str | None = None,
    preset: str | None = None,
    config_file: str | None = None,
    rounds: int | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run `rounds` federated rounds (default `rounds.per_run`), continuing the model's lineage.

    Each round: sample → train (one task per cohort, mapped) → aggregate → evaluate → gate →
    register → promote (or revert to production's weights) and checkpoint.
    """
    logger = get_run_logger()
    config = build_run_config(preset, config_file, rounds, overrides)
    run_id = f"{new_run_id().split('-')[0]}-{str(flow_run.get_id() or '')[:8] or 'local'}"
    ctx = RunContext(
        store_url=store or config.store.resolved_url(), model=model, run_id=run_id, config=config
    )
    start = state = round_tasks.resume(ctx)
    logger.info(
        "run %s: model %r in %s resumes from %s at round %d",
        run_id,
        model,
        ctx.store_url,
        state.source,
        state.server_round,
    )
    records: list[RoundRecord] = []
    first = state.server_round + 1
    for server_round in range(first, first + config.rounds.per_run):
        # quote(): the values are already resolved; Prefect need not walk big models for futures
        # (measured 11.7 -> 7.9 ms a task). Task runs and their names are unchanged.
        c, s = _q(ctx), _q(state)
        sampled = round_tasks.sample_clients(c, server_round)
        groups = cohorts(sampled, config.rounds.clients_per_task)
        futures = round_tasks.train_clients.map(
            unmapped(c), unmapped(s), unmapped(server_round), groups
        )
        errors = _errors(list(futures), groups)
        outcome = round_tasks.aggregate(c, s, server_round, sampled, errors)
        o = _q(outcome)
        metrics = round_tasks.evaluate(c, server_round, o)
        decision = round_tasks.gate(c, server_round, _q(metrics), o)
        manifest = round_tasks.register(c, s, server_round, o, _q(metrics), _q(decision))
        change, state = round_tasks.promote(c, s, server_round, _q(manifest), o)
        record = round_record(manifest, change)
        records.append(record)
        _emit(
            "promoted"
            if record.promoted
            else "rejected"
            if not record.gate_passed
            else "registered",
            model,
            record,
            run_id,
        )
        logger.info(
            "round %d: version %d accuracy %.4f gate %s%s%s",
            server_round,
            record.version,
            record.accuracy,
            "passed" if record.gate_passed else f"rejected ({'; '.join(record.rejected_by)})",
            " -> promoted" if record.promoted else "",
            f"; failed clients {sorted(record.failed)}" if record.failed else "",
        )
        ROUND_EVENTS.info(
            "round", extra={"fedship_round": record, "fedship_total": config.rounds.per_run}
        )
    summary = summarize(ctx, start, records)
    logger.info(
        "run %s done: %d round(s), versions %s, promoted %s, production %s, final accuracy %s",
        run_id,
        summary.rounds_completed,
        summary.versions_registered,
        summary.versions_promoted,
        summary.production,
        summary.final_accuracy,
    )
    return summary.model_dump(mode="json")
