"""`rollback`: move an alias (production) back to a version it served before, after checking it."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from fl.errors import RegistryError
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
) -> dict[str, Any]:
    """Roll `alias` back `steps` promotions (default 1) or to `to_version`.

    The target's checksum is verified and the model loaded and evaluated on its holdout before
    the alias moves. Rolling back to the version already served changes nothing. Fails when
    there is nothing earlier to go to.
    """
    logger = get_run_logger()
    if not reason.strip():
        raise RegistryError("a rollback needs a reason (it goes into the audit record)")
    if steps is None and to_version is None:
        steps = 1
    target = release.rollback_target(store, model, alias, steps, to_version)
    if target is None:
        logger.info("%s/%s already serves version %s: nothing to do", model, alias, to_version)
        return {"alias": alias, "from_version": to_version, "to_version": to_version,
                "changed": False}  # fmt: skip
    metrics = release.verify_version(store, model, target)
    logger.info(
        "version %d verified: checksum ok, holdout accuracy %.4f", target, metrics["accuracy"]
    )
    change = release.move_alias(
        store, model, alias, "rollback", target, current_actor(actor), reason
    )
    logger.warning(
        "%s/%s rolled back from version %s to %s: %s",
        model, alias, change["from_version"], change["to_version"], reason,
    )  # fmt: skip
    return {**change, "verified_metrics": metrics}
