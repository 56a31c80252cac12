"""Release decisions outside training: re-checking a version before it serves again."""

from __future__ import annotations

from typing import Any

from fl import training
from fl.config import RunConfig
from fl.data import load_federation
from fl.gating import Candidate, GateDecision, build_gate
from fl.models import build_model
from fl.registry import DEFAULT_ALIAS, Registry


def verify_version(registry: Registry, version: int) -> dict[str, Any]:
    """Load a version (checksum verified), evaluate it on its own holdout, return the metrics.

    Raises `IntegrityError` if the stored bytes changed since registration.
    """
    weights, manifest = registry.load(version)
    config = RunConfig.model_validate(manifest["config"])
    fed = load_federation(config.data, config.rounds.seed)
    model = build_model(config.model, fed.input_dim, fed.num_classes)
    return training.evaluate(
        model, weights, fed.holdout_x, fed.holdout_y, fed.num_classes
    ).to_dict()


def promotion_decision(
    registry: Registry, version: int, alias: str = DEFAULT_ALIAS
) -> dict[str, Any]:
    """The version's own gate settings, applied against what `alias` serves now; the decision
    records that version as `production_version`, so the promotion can insist on it."""
    manifest = registry.manifest(version)
    config = RunConfig.model_validate(manifest["config"])
    state = registry.alias_state(alias)
    production_version = None if state is None else int(state["version"])
    production_metrics = None
    if production_version is not None and production_version != version:
        production_metrics = registry.manifest(production_version)["metrics"]
    gate = build_gate(config.gate, config.rounds.min_fit_clients)
    decision: GateDecision = gate(
        Candidate(
            metrics=manifest["metrics"],
            production_metrics=production_metrics,
            production_version=production_version,
            num_clients=len(manifest.get("clients", {}).get("contributed", [])) or None,
            privacy=manifest.get("privacy"),
            attack=manifest.get("attack"),
        )
    )
    return {**decision.to_dict(), "production_version": production_version}
