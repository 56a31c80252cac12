"""`deployments/prefect.yaml` and `deployments/serve.py` name real flows with valid parameters.

Building a `RunnerDeployment` does not talk to a Prefect server, so these tests need none.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate

from deployments.serve import PREFECT_YAML, build_deployments

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load(PREFECT_YAML.read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}
EXPECTED_NAMES = ["hourly", "on-demand", "manual"]
# Started by a schedule or an event: nobody is there to fill in a required parameter.
UNATTENDED = [n for n, d in DEPLOYMENTS.items() if d.get("schedules") or d.get("triggers")]


def load_entrypoint(entrypoint: str) -> Any:
    """`path/to/file.py:attribute`, relative to the repository root, as an imported object."""
    path, _, attribute = entrypoint.partition(":")
    assert (REPO_ROOT / path).is_file(), f"entrypoint file {path} does not exist"
    module = ".".join(Path(path).with_suffix("").parts)
    return getattr(importlib.import_module(module), attribute)


def assert_parameters_valid(flow: Flow[..., Any], parameters: dict[str, Any], where: str) -> None:
    """Every name is a parameter of the flow and every value fits its annotation.

    Required parameters may be missing (a run supplies them); Prefect checks deployment
    parameters the same way, with `ignore_required`.
    """
    signature = inspect.signature(flow.fn)
    unknown = set(parameters) - set(signature.parameters)
    assert not unknown, f"{where}: {sorted(unknown)} are not parameters of {flow.name}"
    signature.bind_partial(**parameters)
    # An event template ("{{ event.payload.version }}") is rendered when the trigger fires and
    # validated then; everything literal is validated now.
    literal = {k: v for k, v in parameters.items() if not (isinstance(v, str) and "{{" in v)}
    schema = parameter_schema(flow).model_dump()
    validate(literal, schema, raise_on_error=True, ignore_required=True)


def served_cron(deployment: RunnerDeployment) -> str:
    """The cron string of a served deployment's only schedule."""
    (schedule,) = deployment.schedules or []
    assert isinstance(schedule.schedule, CronSchedule)
    return schedule.schedule.cron


def served_triggers(deployment: RunnerDeployment) -> list[DeploymentEventTrigger]:
    triggers = list(deployment.triggers)
    assert all(isinstance(t, DeploymentEventTrigger) for t in triggers)
    return triggers  # type: ignore[return-value]  # checked just above


def test_prefect_yaml_names_the_three_deployments() -> None:
    assert list(DEPLOYMENTS) == EXPECTED_NAMES
    assert SPEC["prefect-version"].split(".")[0] == "3"


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_entrypoint_is_a_flow_and_parameters_fit_it(name: str) -> None:
    spec = DEPLOYMENTS[name]
    flow = load_entrypoint(spec["entrypoint"])

    assert isinstance(flow, Flow)
    assert_parameters_valid(flow, spec.get("parameters") or {}, f"{name} parameters")
    for trigger in spec.get("triggers", []):
        parsed = DeploymentEventTrigger.model_validate(trigger)
        assert_parameters_valid(flow, parsed.parameters or {}, f"{name} trigger parameters")


@pytest.mark.parametrize("name", UNATTENDED)
def test_unattended_deployment_supplies_every_required_parameter(name: str) -> None:
    spec = DEPLOYMENTS[name]
    flow = load_entrypoint(spec["entrypoint"])
    required = set(parameter_schema(flow).required or [])
    assert required <= set(spec.get("parameters") or {})


def test_training_deployment_is_scheduled_hourly_with_rounds() -> None:
    spec = DEPLOYMENTS["hourly"]
    flow = load_entrypoint(spec["entrypoint"])

    assert flow.name == "federated-training"
    (schedule,) = spec["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    assert cron.cron == "0 * * * *"
    assert schedule.get("active", True)
    assert "rounds" in inspect.signature(flow.fn).parameters
    assert isinstance(spec["parameters"]["rounds"], int) and spec["parameters"]["rounds"] >= 1
    assert spec.get("concurrency_limit") == 1  # two runs would race for the checkpoint


def test_served_deployments_match_prefect_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # Prefect records entrypoints relative to the working directory
    served = build_deployments()

    assert [d.name for d in served] == EXPECTED_NAMES
    by_name = {d.name: d for d in served}
    hourly = by_name["hourly"]
    assert served_cron(hourly) == "0 * * * *"
    assert hourly.concurrency_limit == DEPLOYMENTS["hourly"]["concurrency_limit"]
    for name, deployment in by_name.items():
        spec = DEPLOYMENTS[name]
        assert deployment.entrypoint == spec["entrypoint"]
        set_parameters = {k: v for k, v in deployment.parameters.items() if v is not None}
        assert set_parameters == spec.get("parameters", {})
        triggers = served_triggers(deployment)
        assert [t.parameters for t in triggers] == [
            t.get("parameters") for t in spec.get("triggers", [])
        ]
        assert [sorted(t.expect) for t in triggers] == [
            sorted(t["expect"]) for t in spec.get("triggers", [])
        ]


def test_served_deployments_carry_the_given_model_store_and_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    served = build_deployments(
        model="digits-v2",
        store="s3://bucket/prefix",
        preset="tutorial",
        rounds=3,
        cron="*/5 * * * *",
    )

    by_name = {d.name: d for d in served}
    assert served_cron(by_name["hourly"]) == "*/5 * * * *"
    assert by_name["hourly"].parameters["rounds"] == 3
    for deployment in served:
        assert deployment.parameters["model"] == "digits-v2"
        assert deployment.parameters["store"] == "s3://bucket/prefix"
        assert deployment.entrypoint is not None
        flow = load_entrypoint(deployment.entrypoint)
        assert_parameters_valid(flow, deployment.parameters, f"served {deployment.name}")
