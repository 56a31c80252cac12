"""The promotion gate: composable checks, each a callable returning pass or fail with a reason."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from fl.config import GateConfig


@dataclass(frozen=True)
class Candidate:
    """What the gate looks at: the candidate's metrics and production's, if any."""

    metrics: dict[str, Any]
    production_metrics: dict[str, Any] | None = None
    production_version: int | None = None
    num_clients: int | None = None
    privacy: dict[str, Any] | None = None
    attack: dict[str, Any] | None = None


@dataclass(frozen=True)
class CheckResult:
    check: str
    passed: bool
    reason: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
        }


class Check(Protocol):
    name: str

    def __call__(self, candidate: Candidate) -> CheckResult: ...


class MinAccuracy:
    name = "min_accuracy"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, candidate: Candidate) -> CheckResult:
        accuracy = float(candidate.metrics.get("accuracy", float("nan")))
        ok = accuracy >= self.threshold
        sign = ">=" if ok else "<"
        return CheckResult(
            self.name, ok, f"accuracy {accuracy:.4f} {sign} minimum {self.threshold}"
        )


class MaxRegression:
    name = "max_regression"

    def __init__(self, max_drop: float) -> None:
        self.max_drop = max_drop

    def __call__(self, candidate: Candidate) -> CheckResult:
        if candidate.production_metrics is None:
            return CheckResult(self.name, True, "no production version to compare with")
        accuracy = float(candidate.metrics.get("accuracy", float("nan")))
        deployed = float(candidate.production_metrics.get("accuracy", float("nan")))
        drop = deployed - accuracy
        ok = drop <= self.max_drop + 1e-12
        where = (
            f"production v{candidate.production_version}"
            if candidate.production_version
            else "production"
        )
        verdict = "within" if ok else "exceeds"
        return CheckResult(
            self.name,
            ok,
            f"accuracy {accuracy:.4f} vs {where} {deployed:.4f}: drop {max(drop, 0):.4f} "
            f"{verdict} allowed {self.max_drop}",
        )


class FiniteLoss:
    name = "finite_loss"

    def __call__(self, candidate: Candidate) -> CheckResult:
        loss = float(candidate.metrics.get("loss", float("nan")))
        ok = math.isfinite(loss)
        return CheckResult(self.name, ok, f"loss {loss:.4f} is {'finite' if ok else 'not finite'}")


class MinClients:
    name = "min_clients"

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    def __call__(self, candidate: Candidate) -> CheckResult:
        count = candidate.num_clients or 0
        ok = count >= self.minimum
        return CheckResult(self.name, ok, f"{count} client(s) contributed, minimum {self.minimum}")


class MaxEpsilon:
    name = "max_epsilon"

    def __init__(self, budget: float) -> None:
        self.budget = budget

    def __call__(self, candidate: Candidate) -> CheckResult:
        epsilon = (candidate.privacy or {}).get("epsilon")
        if epsilon is None or isinstance(epsilon, str):
            return CheckResult(
                self.name, False, f"no finite privacy guarantee recorded (budget {self.budget})"
            )
        ok = float(epsilon) <= self.budget
        return CheckResult(
            self.name,
            ok,
            f"epsilon {float(epsilon):.3f} {'<=' if ok else '>'} budget {self.budget}",
        )


class NoSimulatedAttack:
    name = "no_simulated_attack"

    def __call__(self, candidate: Candidate) -> CheckResult:
        if candidate.attack:
            return CheckResult(
                self.name,
                False,
                f"trained under a simulated {candidate.attack.get('kind')} attack "
                "(set gate.allow_attack=true to promote anyway)",
            )
        return CheckResult(self.name, True, "no simulated attack")


class Gate:
    """Runs every check (no short-circuit, so every reason is recorded); passes if all pass."""

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = list(checks)

    def __call__(self, candidate: Candidate) -> GateDecision:
        results = [check(candidate) for check in self.checks]
        return GateDecision(all(r.passed for r in results), results)


def build_gate(cfg: GateConfig, min_fit_clients: int = 1) -> Gate:
    checks: list[Check] = [MinAccuracy(cfg.min_accuracy), MaxRegression(cfg.max_regression)]
    if cfg.require_finite_loss:
        checks.append(FiniteLoss())
    checks.append(MinClients(cfg.min_clients or min_fit_clients))
    if cfg.max_epsilon is not None:
        checks.append(MaxEpsilon(cfg.max_epsilon))
    if not cfg.allow_attack:
        checks.append(NoSimulatedAttack())
    return Gate(checks)
