"""`rollback`: move an alias (production) back to a version it served before, after checking it."""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from fl.errors import AliasMoved, RegistryError
from flows.actor import current_actor
from tasks import release


@flow(name="rollback", flow_run_name="rollback-{model}", validate_parameters=True)
def rollback(
    reason: str,
    model: str = "default",
    store: str | None = None,
    steps: int | None = None,
    to_version: int | None = None,
    alias: str = "production",
    actor: str | None = None,
    expected_version: int | None = None,
) -> dict[str, Any]:
    """Roll `alias` back `steps` promotions (default 1) or to `to_version`.

    With `expected_version` (the version an alert was about), the rollback happens only while
    the alias still serves that version: a repeated alert does not roll back a second time.

    The target's checksum is verified and the model loaded and evaluated on its holdout before
    the alias moves. Rolling back to the version already served changes nothing. Fails when
    there is nothing earlier to go to.
    """
    logger = get_run_logger()
    if not reason.strip():
        raise RegistryError("a rollback needs a reason (it goes into the audit record)")
    if steps is None and to_version is None:
        steps = 1
    target, current = release.rollback_target(
        store, model, alias, steps, to_version, expected_version
    )
    if target is None:
        logger.info("%s/%s serves version %s: nothing to do", model, alias, current)
        return {"alias": alias, "from_version": current, "to_version": current, "changed": False}
    metrics = release.verify_version(store, model, target)
    logger.info(
        "version %d verified: checksum ok, holdout accuracy %.4f", target, metrics["accuracy"]
    )
    try:
        change = release.move_alias(
            store, model, alias, "rollback", target, current_actor(actor), reason,
            request_id=f"{flow_run.get_id() or uuid.uuid4()}:rollback", expected_from=current,
        )  # fmt: skip
    except AliasMoved:
        if expected_version is None:
            raise
        logger.info("%s/%s moved off version %s meanwhile: nothing to do", model, alias, current)
        return {"alias": alias, "from_version": current, "to_version": current, "changed": False}
    logger.warning(
        "%s/%s rolled back from version %s to %s: %s",
        model, alias, change["from_version"], change["to_version"], reason,
    )  # fmt: skip
    return {**change, "verified_metrics": metrics}
