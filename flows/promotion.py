"""`promote`: put a chosen version into production through the gate, or forced with a reason."""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from fl.errors import PromotionRefused, RegistryError
from flows.actor import current_actor
from tasks import release


@flow(name="promote", flow_run_name="promote-{model}-v{version}", validate_parameters=True)
def promote(
    version: int,
    model: str = "default",
    store: str | None = None,
    alias: str = "production",
    force: bool = False,
    reason: str = "",
    actor: str | None = None,
) -> dict[str, Any]:
    """Verify the version, run its gate against what `alias` serves now, then move the alias.

    With `force`, a gate refusal is overridden; a reason is then required and recorded.
    """
    logger = get_run_logger()
    if force and not reason.strip():
        raise RegistryError("a forced promotion needs a reason (it goes into the audit record)")
    metrics = release.verify_version(store, model, version)
    decision = release.promotion_gate(store, model, version, alias)
    if not decision["passed"]:
        refused = "; ".join(c["reason"] for c in decision["checks"] if not c["passed"])
        if not force:
            raise PromotionRefused(
                f"gate refused version {version}: {refused} (use force with a reason)"
            )
        logger.warning("gate refused version %d (%s); promoting anyway (forced)", version, refused)
    why = reason or "gate passed: " + "; ".join(decision["reasons"])
    if force and not decision["passed"]:
        why = f"forced over gate refusal ({refused}): {reason}"
    change = release.move_alias(
        store, model, alias, "promote", version, current_actor(actor), why,
        request_id=f"{flow_run.get_id() or uuid.uuid4()}:promote",
        expected_from=decision["production_version"],
    )  # fmt: skip
    logger.info(
        "%s/%s now serves version %d (accuracy %.4f)", model, alias, version, metrics["accuracy"]
    )
    return {**change, "gate": decision}
