"""Prefect tasks for release operations: verify a version, move an alias."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from fl import release
from fl.registry import Registry
from fl.store import open_store
from tasks.retry import IO


def registry(store: str | None, model: str) -> Registry:
    return Registry(open_store(store), model)


@task(
    name="rollback-target",
    task_run_name="rollback target {model}/{alias}",
    cache_policy=NO_CACHE,
    **IO,
)
def rollback_target(
    store: str | None,
    model: str,
    alias: str,
    steps: int | None,
    to_version: int | None,
    expected_version: int | None = None,
) -> tuple[int | None, int | None]:
    """(version to go back to, version served now), read together. The target is None when
    there is nothing to do: already there, or the alias has moved off `expected_version`."""
    reg = registry(store, model)
    state = reg.alias_state(alias)
    current = None if state is None else int(state["version"])
    if expected_version is not None and current != expected_version:
        return None, current
    return reg.rollback_target(steps=steps, to=to_version, alias=alias), current


@task(name="verify-version", task_run_name="verify {model} v{version}", cache_policy=NO_CACHE,
      timeout_seconds=600)  # fmt: skip
def verify_version(store: str | None, model: str, version: int) -> dict[str, Any]:
    """Checksum, load and evaluate a version; not retried: a mismatch does not heal."""
    return release.verify_version(registry(store, model), version)


@task(name="promotion-gate", task_run_name="gate {model} v{version}", cache_policy=NO_CACHE, **IO)
def promotion_gate(store: str | None, model: str, version: int, alias: str) -> dict[str, Any]:
    return release.promotion_decision(registry(store, model), version, alias)


@task(
    name="move-alias",
    task_run_name="{action} {model}/{alias} to v{version}",
    cache_policy=NO_CACHE,
    **IO,
)
def move_alias(
    store: str | None,
    model: str,
    alias: str,
    action: str,
    version: int,
    actor: str,
    reason: str,
    request_id: str,
    expected_from: int | None,
) -> dict[str, Any]:
    """Promote, or roll back to exactly `version`, only if the alias is still at
    `expected_from`. A retry (same `request_id`) completes the same change."""
    reg = registry(store, model)
    if action == "promote":
        change = reg.promote(
            version, alias=alias, actor=actor, reason=reason, request_id=request_id,
            expected_from=expected_from,
        )  # fmt: skip
    else:
        change = reg.rollback(
            to=version, alias=alias, actor=actor, reason=reason, request_id=request_id,
            expected_from=expected_from,
        )  # fmt: skip
    return change.to_dict()
