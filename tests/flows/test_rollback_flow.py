"""`rollback`: production moves back to a version it served before, verified and audited."""

from __future__ import annotations

from typing import Any

import pytest

from fl.errors import IntegrityError, RegistryError
from flows.rollback import rollback
from tests.flows.conftest import PASS_ALL, REJECT_ALL, S3Target, seed_versions


def snapshot(target: S3Target) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Everything a rollback may change: the alias (with its history) and the audit trail."""
    registry = target.registry()
    return registry.alias_state(), registry.audit_log()


def test_rollback_goes_back_one_promotion_and_is_audited(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL, PASS_ALL, PASS_ALL])  # production 1 -> 2 -> 3
    _, audit_before = snapshot(s3_target)

    change = rollback(reason="canary error rate up", store=s3_target.url, actor="alice")

    assert (change["from_version"], change["to_version"], change["changed"]) == (3, 2, True)
    assert (
        change["verified_metrics"]["accuracy"]
        == s3_target.registry().manifest(2)["metrics"]["accuracy"]
    )
    alias, audit = snapshot(s3_target)
    assert alias is not None and alias["version"] == 2
    event = alias["history"][-1]
    assert {k: event[k] for k in ("action", "from", "to", "actor", "reason")} == {
        "action": "rollback", "from": 3, "to": 2, "actor": "alice",
        "reason": "canary error rate up",
    }  # fmt: skip
    assert s3_target.store().exists(event["audit_key"])
    assert len(audit) == len(audit_before) + 1
    record = audit[0]
    assert record["action"] == "rollback"
    assert (record["actor"], record["reason"]) == ("alice", "canary error rate up")
    assert (record["from_version"], record["to_version"]) == (3, 2)


def test_rollback_to_a_version_twice_changes_once(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL, PASS_ALL, PASS_ALL])

    first = rollback(reason="back to v1", store=s3_target.url, to_version=1, actor="bob")
    after_first = snapshot(s3_target)
    second = rollback(reason="back to v1", store=s3_target.url, to_version=1, actor="bob")

    assert (first["from_version"], first["to_version"], first["changed"]) == (3, 1, True)
    assert (second["to_version"], second["changed"]) == (1, False)
    assert snapshot(s3_target) == after_first  # no new audit record, alias untouched


def test_a_rejected_version_is_never_a_rollback_target(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL, REJECT_ALL, PASS_ALL])  # v2 was never production
    registry = s3_target.registry()
    assert not registry.manifest(2)["gate"]["passed"]
    before = snapshot(s3_target)

    with pytest.raises(RegistryError, match="version 2 is not an earlier target of 'production'"):
        rollback(reason="try the rejected one", store=s3_target.url, to_version=2)
    assert snapshot(s3_target) == before

    change = rollback(reason="one step back", store=s3_target.url)
    assert (change["from_version"], change["to_version"]) == (3, 1)


@pytest.mark.parametrize(
    ("gates", "message"),
    [
        pytest.param([REJECT_ALL], "has no 'production' alias yet", id="never-promoted"),
        pytest.param([PASS_ALL], "nothing to roll back", id="one-promotion"),
        pytest.param([PASS_ALL, REJECT_ALL], "nothing to roll back", id="only-rejections-since"),
    ],
)
def test_nothing_to_roll_back_to_fails_and_changes_nothing(
    s3_target: S3Target, gates: list[list[str]], message: str
) -> None:
    seed_versions(s3_target, gates)
    before = snapshot(s3_target)

    with pytest.raises(RegistryError, match=message):
        rollback(reason="nothing earlier", store=s3_target.url)

    assert snapshot(s3_target) == before


def test_corrupted_target_fails_integrity_check_and_alias_stays(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL, PASS_ALL])
    s3_target.flip_byte(s3_target.registry().model_key(1))
    before = snapshot(s3_target)

    with pytest.raises(IntegrityError, match="version 1: stored bytes have sha256"):
        rollback(reason="v2 misbehaves", store=s3_target.url)

    after = snapshot(s3_target)
    assert after == before
    assert after[0] is not None and after[0]["version"] == 2


def test_blank_reason_is_refused(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL, PASS_ALL])
    before = snapshot(s3_target)

    with pytest.raises(RegistryError, match="needs a reason"):
        rollback(reason="   ", store=s3_target.url)

    assert snapshot(s3_target) == before


def test_a_repeated_alert_about_one_version_rolls_back_once(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL, PASS_ALL, PASS_ALL])  # production 1 -> 2 -> 3
    first = rollback(reason="alert: v3 degraded", store=s3_target.url, expected_version=3)
    again = rollback(reason="alert: v3 degraded", store=s3_target.url, expected_version=3)
    assert (first["from_version"], first["to_version"], first["changed"]) == (3, 2, True)
    assert (again["from_version"], again["to_version"], again["changed"]) == (2, 2, False)
    alias, audit = snapshot(s3_target)
    assert alias is not None and alias["version"] == 2
    assert sum(r["action"] == "rollback" for r in audit) == 1
