"""Registry: allocation, aliases, rollback semantics, integrity. Concurrency on real endpoints."""

from __future__ import annotations

import json
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from fl.errors import AliasMoved, ConfigError, IntegrityError, PreconditionFailed, RegistryError
from fl.registry import Registry
from fl.serialization import sha256_hex
from fl.store import LocalStore, ObjectStore

WEIGHTS = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}


def register(reg: Registry, accuracy: float = 0.9, passed: bool = True) -> int:
    manifest = reg.register(
        WEIGHTS,
        run_id="test",
        metrics={"accuracy": accuracy, "loss": 0.1},
        fields={"gate": {"passed": passed, "reasons": ["test"]}},
    )
    return int(manifest["version"])


@pytest.fixture
def reg(store: ObjectStore) -> Registry:
    return Registry(store, "digits")


def test_versions_are_consecutive_and_manifest_records_checksum(reg: Registry) -> None:
    assert [register(reg) for _ in range(3)] == [1, 2, 3]
    manifest = reg.manifest(2)
    stored = reg.store.get(reg.model_key(2)).data
    assert manifest["sha256"] == sha256_hex(stored) and len(manifest["sha256"]) == 64
    assert manifest["size"] == len(stored)
    assert manifest["created_at"].endswith("+00:00")
    assert [m["version"] for m in reg.list_versions()] == [3, 2, 1]
    assert [m["version"] for m in reg.list_versions(limit=1, before=3)] == [2]


def test_models_sharing_a_store_are_independent(store: ObjectStore) -> None:
    a, b = Registry(store, "a"), Registry(store, "b")
    assert register(a) == 1 and register(a) == 2 and register(b) == 1


def test_load_round_trips_and_resolves_aliases(reg: Registry) -> None:
    version = register(reg)
    reg.promote(version, actor="me", reason="first")
    weights, manifest = reg.load("production")
    assert manifest["version"] == version
    assert all(torch.equal(weights[k], WEIGHTS[k]) for k in WEIGHTS)


def test_rollback_returns_to_previous_promotion_never_a_rejected_version(reg: Registry) -> None:
    one, two = register(reg), register(reg)
    reg.promote(one, actor="t", reason="r")
    reg.promote(two, actor="t", reason="r")
    three = register(reg, accuracy=0.1, passed=False)  # registered, rejected, never promoted
    assert three == 3
    change = reg.rollback(steps=1, actor="oncall", reason="regression in the field")
    assert (change.from_version, change.to_version, change.changed) == (2, 1, True)
    assert reg.resolve("production") == 1
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback(steps=1, actor="oncall", reason="again")
    assert reg.resolve("production") == 1


def test_rollback_to_version_is_idempotent_and_refuses_unpromoted(reg: Registry) -> None:
    for _ in range(3):
        reg.promote(register(reg), actor="t", reason="r")
    with pytest.raises(RegistryError, match="version 99 is not an earlier target of 'production'"):
        reg.rollback(to=99, reason="x")
    first = reg.rollback(to=1, reason="bad deploy")
    again = reg.rollback(to=1, reason="bad deploy")
    assert first.changed and not again.changed
    assert len(reg.audit_log()) == 4  # 3 promotions + 1 rollback; the no-op wrote nothing


def test_rollback_without_alias_is_a_clear_error(reg: Registry) -> None:
    register(reg)
    with pytest.raises(RegistryError, match="no 'production' alias yet"):
        reg.rollback(reason="x")


def test_audit_records_who_what_why(reg: Registry) -> None:
    reg.promote(register(reg), actor="ci", reason="gate passed")
    reg.promote(register(reg), actor="ci", reason="gate passed")
    reg.rollback(actor="alice", reason="latency spike")
    newest = reg.audit_log()[0]
    assert newest["action"] == "rollback" and newest["actor"] == "alice"
    assert (newest["from_version"], newest["to_version"]) == (2, 1)
    assert newest["reason"] == "latency spike" and newest["at"]


def test_any_alias_name_and_unknown_version(reg: Registry) -> None:
    version = register(reg)
    reg.promote(version, alias="canary", reason="try")
    assert reg.aliases() == {"canary": version}
    with pytest.raises(RegistryError, match="no version 7"):
        reg.promote(7)
    with pytest.raises(ConfigError, match="invalid alias name"):
        reg.promote(version, alias="../etc")
    with pytest.raises(ConfigError, match="read as a version number"):
        reg.promote(version, alias="2024")


def test_flipped_byte_is_detected_on_load(reg: Registry) -> None:
    version = register(reg)
    data = bytearray(reg.store.get(reg.model_key(version)).data)
    data[-1] ^= 0x01
    reg.store.put(reg.model_key(version), bytes(data))
    with pytest.raises(IntegrityError) as info:
        reg.load(version)
    message = str(info.value)
    assert f"version {version}" in message
    assert reg.manifest(version)["sha256"] in message and sha256_hex(bytes(data)) in message


class _Boom:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.marker), "executed"))


@pytest.mark.parametrize("update_manifest", [False, True], ids=["sha-mismatch", "sha-matches"])
def test_planted_pickle_is_refused_without_executing(
    reg: Registry, tmp_path: Path, update_manifest: bool
) -> None:
    version = register(reg)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Boom(str(marker)))
    reg.store.put(reg.model_key(version), payload)
    if update_manifest:  # an attacker who can also rewrite the manifest still gets no unpickle
        manifest = {**reg.manifest(version), "sha256": sha256_hex(payload)}
        reg.store.put(reg.manifest_key(version), json.dumps(manifest).encode())
    with pytest.raises(IntegrityError):
        reg.load(version)
    assert not marker.exists()


def test_crash_before_manifest_leaves_no_visible_version(reg: Registry) -> None:
    register(reg)
    reg._allocate("crashed-run")  # claimed, model and manifest never written
    assert register(reg) == 3
    assert [m["version"] for m in reg.list_versions()] == [3, 1]
    with pytest.raises(RegistryError):
        reg.manifest(2)


# ----- concurrency: LocalStore and the moto HTTP server ----------------------------------------
def _race(n: int, action):  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(n)

    def run(i: int):  # type: ignore[no-untyped-def]
        barrier.wait()
        return action(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_concurrent_registrations_get_distinct_consecutive_versions(
    concurrent_store: ObjectStore,
) -> None:
    reg = Registry(concurrent_store, "race")
    versions = _race(8, lambda i: register(reg))
    assert sorted(versions) == list(range(1, 9))


def test_concurrent_promotions_all_land_in_history(concurrent_store: ObjectStore) -> None:
    reg = Registry(concurrent_store, "race")
    versions = [register(reg) for _ in range(8)]
    changes = _race(8, lambda i: reg.promote(versions[i], actor=f"t{i}", reason="race"))
    state = reg.alias_state("production")
    assert state is not None
    promoted = {e["to"] for e in state["history"]}
    assert promoted == {c.to_version for c in changes if c.changed} == set(versions)
    # the stack plus the current target hold every promotion exactly once
    assert sorted([*state["stack"], state["version"]]) == versions
    assert len(reg.audit_log()) == 8


# ----- retries and lost replies --------------------------------------------------------------
class LostReplies:
    """A store whose conditional writes land but report failure once, as after a lost reply."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.lose_next = False

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def _maybe_lose(self, token: str) -> str:
        if self.lose_next:
            self.lose_next = False
            raise PreconditionFailed("reply lost after the write landed")
        return token

    def put_if_absent(self, key: str, data: bytes) -> str:
        return self._maybe_lose(self.inner.put_if_absent(key, data))

    def put_if_match(self, key: str, data: bytes, token: str) -> str:
        return self._maybe_lose(self.inner.put_if_match(key, data, token))


def test_lost_reply_on_alias_write_does_not_roll_back_twice(tmp_path: Path) -> None:
    flaky = LostReplies(LocalStore(tmp_path))
    reg = Registry(flaky, "m")  # type: ignore[arg-type]
    for _ in range(3):
        reg.promote(register(reg), reason="r")
    flaky.lose_next = True
    change = reg.rollback(steps=1, reason="incident")
    assert (change.from_version, change.to_version) == (3, 2)
    assert reg.resolve("production") == 2
    assert [r["to_version"] for r in reg.audit_log()][:1] == [2]


def test_lost_reply_on_create_only_write_registers_once(tmp_path: Path) -> None:
    flaky = LostReplies(LocalStore(tmp_path))
    reg = Registry(flaky, "m")  # type: ignore[arg-type]
    flaky.lose_next = True  # the claim lands, its reply is lost
    assert register(reg) == 1
    assert register(reg) == 2


def test_retried_promotion_completes_the_same_change(tmp_path: Path) -> None:
    reg = Registry(LocalStore(tmp_path), "m")
    version = register(reg)
    first = reg.promote(version, reason="r", request_id="run-1:round-1")
    for key in list(reg.store.list("models/m/audit/")):
        reg.store.delete(key)  # the first attempt died before writing its audit record
    again = reg.promote(version, reason="r", request_id="run-1:round-1")
    assert first.changed and again.changed and again.at == first.at
    assert len(reg.audit_log()) == 1
    assert len(reg.alias_state()["history"]) == 1  # type: ignore[index]
    assert not reg.promote(version, reason="r").changed  # a new request: nothing to do


def test_promotion_refused_when_production_moved_since_the_gate(tmp_path: Path) -> None:
    reg = Registry(LocalStore(tmp_path), "m")
    one, two, three = register(reg), register(reg), register(reg)
    reg.promote(one, reason="r")
    reg.promote(two, reason="r")
    reg.rollback(to=one, reason="incident")
    with pytest.raises(AliasMoved, match="at version 1, not 2"):
        reg.promote(three, reason="gated against v2", expected_from=two)
    assert reg.resolve("production") == one
