"""The gate: each check's verdict and reason, and their composition."""

from __future__ import annotations

import math

import pytest

from fl.config import GateConfig
from fl.gating import (
    Candidate,
    FiniteLoss,
    MaxEpsilon,
    MaxRegression,
    MinAccuracy,
    MinClients,
    build_gate,
)


@pytest.mark.parametrize(
    ("check", "candidate", "passed", "fragment"),
    [
        (MinAccuracy(0.7), Candidate({"accuracy": 0.69}), False, "0.6900 < minimum 0.7"),
        (MinAccuracy(0.7), Candidate({"accuracy": 0.7}), True, ">= minimum"),
        (MaxRegression(0.1), Candidate({"accuracy": 0.5}), True, "no production"),
        (
            MaxRegression(0.1),
            Candidate({"accuracy": 0.79}, {"accuracy": 0.9}, 4),
            False,
            "production v4",
        ),
        (MaxRegression(0.1), Candidate({"accuracy": 0.81}, {"accuracy": 0.9}, 4), True, "within"),
        (FiniteLoss(), Candidate({"loss": math.nan}), False, "not finite"),
        (MinClients(3), Candidate({}, num_clients=2), False, "2 client(s) contributed, minimum 3"),
        (MaxEpsilon(2.0), Candidate({}, privacy={"epsilon": 3.5}), False, "3.500 > budget 2.0"),
        (MaxEpsilon(2.0), Candidate({}, privacy=None), False, "no finite privacy"),
    ],
)
def test_check(check, candidate, passed, fragment) -> None:  # type: ignore[no-untyped-def]
    result = check(candidate)
    assert result.passed is passed
    assert fragment in result.reason


def test_gate_records_every_reason_and_fails_if_any_fails() -> None:
    gate = build_gate(GateConfig(min_accuracy=0.7, max_regression=0.1), min_fit_clients=2)
    decision = gate(Candidate({"accuracy": 0.5, "loss": 1.0}, {"accuracy": 0.9}, 1, num_clients=5))
    assert not decision.passed
    names = [c.check for c in decision.checks]
    assert names[:4] == ["min_accuracy", "max_regression", "finite_loss", "min_clients"]
    assert len(decision.to_dict()["reasons"]) == len(names)


def test_simulated_attack_blocks_promotion_unless_allowed() -> None:
    candidate = Candidate(
        {"accuracy": 0.99, "loss": 0.1}, num_clients=8, attack={"kind": "sign_flip"}
    )
    assert not build_gate(GateConfig(min_accuracy=0.5))(candidate).passed
    assert build_gate(GateConfig(min_accuracy=0.5, allow_attack=True))(candidate).passed
