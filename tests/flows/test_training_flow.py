"""`federated_training` on an S3 store (moto's HTTP server) through a real Prefect server."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from fl import training
from fl.config import load_config
from fl.errors import RoundError
from fl.sampling import sample_clients
from flows.training import federated_training
from tests.flows.conftest import MODEL, PASS_ALL, REJECT_ALL, SMALL, S3Target, seed_versions

SUMMARY_KEYS = {
    "run_id", "model", "store", "rounds_completed", "first_round", "last_round", "resumed_from",
    "versions_registered", "versions_promoted", "production", "final_accuracy", "rounds",
}  # fmt: skip
MANIFEST_KEYS = {
    "version", "model", "sha256", "size", "metrics", "run_id", "created_at", "round",
    "parent_version", "config", "partition_fingerprint", "code_version", "gate", "clients",
}  # fmt: skip
SHA256 = re.compile(r"[0-9a-f]{64}")


def train(target: S3Target, rounds: int, *extra: str) -> dict[str, Any]:
    return federated_training(
        model=MODEL, store=target.url, preset="tutorial", rounds=rounds, overrides=[*SMALL, *extra]
    )


def checkpoint(target: S3Target) -> dict[str, Any]:
    return json.loads(target.read(f"models/{MODEL}/checkpoint.json"))


def manifests(target: S3Target) -> dict[int, dict[str, Any]]:
    return {m["version"]: m for m in target.registry().list_versions()}


def test_rounds_register_checksummed_versions_promote_by_gate_and_resume(
    s3_target: S3Target,
) -> None:
    first = train(s3_target, 3, "gate.min_accuracy=0.0")

    assert set(first) == SUMMARY_KEYS
    assert first["resumed_from"] == "fresh"
    assert (first["rounds_completed"], first["first_round"], first["last_round"]) == (3, 1, 3)
    assert first["versions_registered"] == [1, 2, 3]
    found = manifests(s3_target)
    assert sorted(found) == [1, 2, 3]
    for version, manifest in found.items():
        assert set(manifest) >= MANIFEST_KEYS
        assert manifest["round"] == version
        assert SHA256.fullmatch(manifest["sha256"])
        model_key = s3_target.registry().model_key(version)
        assert s3_target.sha256(model_key) == manifest["sha256"]
        assert len(s3_target.read(model_key)) == manifest["size"]
    assert found[1]["parent_version"] is None

    passed = [v for v, m in sorted(found.items()) if m["gate"]["passed"]]
    assert 1 in passed  # nothing to regress against and no accuracy floor
    assert first["versions_promoted"] == passed
    production = s3_target.registry().alias_state()
    assert production is not None
    assert {event["to"] for event in production["history"]} == set(passed)
    assert first["production"] == production["version"] == passed[-1]
    assert list(s3_target.store().list(f"models/{MODEL}/scratch/")) == []

    held = checkpoint(s3_target)
    assert held["server_round"] == 3
    second = train(s3_target, 2, "gate.min_accuracy=0.0")

    assert second["resumed_from"] == "checkpoint"
    assert (second["first_round"], second["last_round"]) == (4, 5)
    assert second["versions_registered"] == [4, 5]
    found = manifests(s3_target)
    assert [found[v]["round"] for v in (4, 5)] == [4, 5]
    assert found[4]["parent_version"] == held["weights_version"]
    assert found[4]["run_id"] != found[3]["run_id"]
    assert list(s3_target.store().list(f"models/{MODEL}/scratch/")) == []


def test_without_checkpoint_training_resumes_from_production(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL, REJECT_ALL])  # v1 promoted in round 1, v2 rejected
    s3_target.store().delete(f"models/{MODEL}/checkpoint.json")

    summary = train(s3_target, 1, *PASS_ALL)

    assert summary["resumed_from"] == "production"
    # production's weights, but the round counter goes on after the newest version (v2, round 2)
    assert summary["first_round"] == manifests(s3_target)[2]["round"] + 1 == 3
    assert summary["versions_registered"] == [3]
    assert manifests(s3_target)[3]["parent_version"] == 1


@pytest.mark.parametrize(("on_reject", "second_parent"), [("revert", 1), ("continue", 2)])
def test_rejected_candidate_is_dropped_or_kept_by_on_reject(
    s3_target: S3Target, on_reject: str, second_parent: int
) -> None:
    seed_versions(s3_target, [PASS_ALL])  # v1 is production

    summary = train(s3_target, 2, *REJECT_ALL, f"gate.on_reject={on_reject}")

    assert summary["versions_registered"] == [2, 3]
    assert summary["versions_promoted"] == []
    assert summary["production"] == 1
    found = manifests(s3_target)
    assert not found[2]["gate"]["passed"] and not found[3]["gate"]["passed"]
    assert found[2]["parent_version"] == 1
    assert found[3]["parent_version"] == second_parent
    assert checkpoint(s3_target)["weights_version"] == (1 if on_reject == "revert" else 3)


# ----- client failures ----------------------------------------------------------------------
def round_one_clients() -> list[int]:
    config = load_config(preset="tutorial", overrides=SMALL)
    return sample_clients(
        config.data.num_clients,
        config.rounds.clients_per_round,
        seed=config.rounds.seed,
        server_round=1,
    )


def inject_failures(
    monkeypatch: pytest.MonkeyPatch, fails: Callable[[int, int], bool]
) -> Counter[int]:
    """Make `training.train_cohort` raise for a client when `fails(client_id, attempt)`.

    Returns the number of training attempts per client, counted as the calls arrive.
    """
    real = training.train_cohort
    attempts: Counter[int] = Counter()
    lock = threading.Lock()

    def train_cohort(
        model: Any, weights: Any, clients: Sequence[Any], *args: Any, **kwargs: Any
    ) -> Any:
        with lock:
            attempts.update(c.client_id for c in clients)
            now = {c.client_id: attempts[c.client_id] for c in clients}
        for client_id, attempt in now.items():
            if fails(client_id, attempt):
                raise RuntimeError(f"injected failure of client {client_id}")
        return real(model, weights, clients, *args, **kwargs)

    monkeypatch.setattr(training, "train_cohort", train_cohort)
    return attempts


def test_client_failing_once_is_retried_and_contributes(
    s3_target: S3Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampled = round_one_clients()
    flaky = sampled[0]
    attempts = inject_failures(monkeypatch, lambda cid, attempt: cid == flaky and attempt == 1)

    summary = train(s3_target, 1, *PASS_ALL)

    assert attempts == Counter({**dict.fromkeys(sampled, 1), flaky: 2})
    clients = manifests(s3_target)[1]["clients"]
    assert clients["failed"] == {}
    assert clients["contributed"] == sampled
    assert summary["rounds"][0]["failed"] == {}


def test_client_failing_every_attempt_is_recorded_and_round_completes(
    s3_target: S3Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.round import CLIENT_RETRIES

    sampled = round_one_clients()
    broken = sampled[-1]
    attempts = inject_failures(monkeypatch, lambda cid, attempt: cid == broken)

    summary = train(s3_target, 1, *PASS_ALL)

    assert attempts[broken] == 1 + CLIENT_RETRIES
    manifest = manifests(s3_target)[1]
    assert manifest["clients"]["failed"] == {
        str(broken): f"RuntimeError: injected failure of client {broken}"
    }
    assert manifest["clients"]["contributed"] == [c for c in sampled if c != broken]
    assert (
        len(manifest["clients"]["contributed"])
        >= load_config(preset="tutorial", overrides=SMALL).rounds.min_fit_clients
    )
    assert summary["versions_registered"] == [1]
    assert list(s3_target.store().list(f"models/{MODEL}/scratch/")) == []


def test_too_many_failed_clients_fail_the_flow_and_register_nothing(
    s3_target: S3Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampled = round_one_clients()
    inject_failures(monkeypatch, lambda cid, attempt: cid in sampled[:2])

    with pytest.raises(RoundError, match="min_fit_clients"):
        train(s3_target, 1, *PASS_ALL)

    registry = s3_target.registry()
    assert registry.list_versions() == []
    assert registry.alias_state() is None
    assert not s3_target.store().exists(f"models/{MODEL}/checkpoint.json")


def test_failed_round_leaves_no_scratch(
    s3_target: S3Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampled = round_one_clients()
    inject_failures(monkeypatch, lambda cid, attempt: cid in sampled[:2])

    with pytest.raises(RoundError):
        train(s3_target, 1, *PASS_ALL)

    assert list(s3_target.store().list(f"models/{MODEL}/scratch/")) == []
