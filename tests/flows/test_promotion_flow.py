"""`promote`: a version goes to production through its gate, or forced with a reason."""

from __future__ import annotations

from typing import Any

import pytest

from fl.errors import IntegrityError, PromotionRefused, RegistryError
from flows.promotion import promote
from tests.flows.conftest import PASS_ALL, REJECT_ALL, S3Target, seed_versions


def snapshot(target: S3Target) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    registry = target.registry()
    return registry.alias_state(), registry.audit_log()


def test_gate_passing_version_is_promoted(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL, PASS_ALL])  # production 1 -> 2; v1 passes its gate

    change = promote(version=1, store=s3_target.url, actor="carol")

    assert (change["from_version"], change["to_version"], change["changed"]) == (2, 1, True)
    assert change["gate"]["passed"]
    alias, audit = snapshot(s3_target)
    assert alias is not None and alias["version"] == 1
    assert alias["stack"] == [1, 2]  # a rollback now returns to 2
    assert audit[0]["action"] == "promote"
    assert (audit[0]["actor"], audit[0]["from_version"], audit[0]["to_version"]) == ("carol", 2, 1)
    assert audit[0]["reason"].startswith("gate passed")


def test_promoting_the_serving_version_changes_nothing(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL])
    before = snapshot(s3_target)

    change = promote(version=1, store=s3_target.url)

    assert (change["to_version"], change["changed"]) == (1, False)
    assert snapshot(s3_target) == before


@pytest.mark.parametrize(
    ("version", "options", "error", "message"),
    [
        pytest.param(2, {}, PromotionRefused, "gate refused version 2", id="gate-refuses"),
        pytest.param(
            2, {"force": True, "reason": " "}, RegistryError, "needs a reason", id="force-no-reason"
        ),
        pytest.param(9, {}, RegistryError, "has no version 9", id="unknown-version"),
        pytest.param(3, {}, IntegrityError, "version 3: stored bytes", id="corrupted"),
    ],
)
def test_refused_promotion_changes_nothing(
    s3_target: S3Target, version: int, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    seed_versions(s3_target, [PASS_ALL, REJECT_ALL, PASS_ALL])  # v2 failed its gate
    s3_target.flip_byte(s3_target.registry().model_key(3))
    s3_target.registry().promote(1, actor="setup")  # production 3 -> 1, so v3 is a candidate
    before = snapshot(s3_target)

    with pytest.raises(error, match=message):
        promote(version=version, store=s3_target.url, **options)

    assert snapshot(s3_target) == before


def test_forced_promotion_over_gate_refusal_is_audited_as_forced(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL, REJECT_ALL])

    change = promote(
        version=2, store=s3_target.url, force=True, reason="hotfix for incident 42", actor="dave"
    )

    assert (change["from_version"], change["to_version"], change["changed"]) == (1, 2, True)
    assert not change["gate"]["passed"]
    alias, audit = snapshot(s3_target)
    assert alias is not None and alias["version"] == 2
    assert audit[0]["actor"] == "dave"
    assert audit[0]["reason"].startswith("forced")
    assert "hotfix for incident 42" in audit[0]["reason"]
    assert "accuracy" in audit[0]["reason"]  # the refusal it overrode is on record
