"""Serve the training, rollback and promotion deployments from one process (no work pool)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.promotion import promote
from flows.rollback import rollback
from flows.training import federated_training

PREFECT_YAML = Path(__file__).with_name("prefect.yaml")


def _trigger(event: str, parameters: dict[str, Any]) -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        expect={event},
        match={"prefect.resource.id": "fedship.model.*"},
        parameters=parameters,
    )


def build_deployments(
    *,
    model: str = "default",
    store: str | None = None,
    preset: str = "digits",
    rounds: int = 1,
    cron: str = "0 * * * *",
) -> list[RunnerDeployment]:
    """The three deployments of `prefect.yaml`, bound to one model and store."""
    common: dict[str, Any] = {"model": model, "store": store}
    # `to_deployment` is typed as maybe-async; called from sync code it returns the deployment.
    deployments: list[Any] = [
        federated_training.to_deployment(
            name="hourly",
            schedule=Cron(cron, timezone="UTC"),
            parameters={**common, "preset": preset, "rounds": rounds},
            concurrency_limit=1,
            description="Scheduled federated training; continues the model's round counter.",
            triggers=[
                _trigger("fedship.data.updated", {"model": "{{ event.resource['fedship.model'] }}"})
            ],
        ),
        rollback.to_deployment(
            name="on-demand",
            parameters={**common, "reason": "on-demand rollback"},
            description="Roll production back to the previously promoted version.",
            triggers=[
                _trigger(
                    "fedship.production.degraded",
                    {
                        "model": "{{ event.resource['fedship.model'] }}",
                        "reason": "{{ event.payload.reason }}",
                        "expected_version": "{{ event.payload.version }}",
                    },
                )
            ],  # fmt: skip
        ),
        promote.to_deployment(
            name="manual",
            parameters=common,
            description="Promote a chosen version through the gate, or forced with a reason.",
        ),
    ]
    return [d for d in deployments if isinstance(d, RunnerDeployment)]


def serve_all(**options: Any) -> None:
    serve(*build_deployments(**options))
