"""Model registry on any object store: immutable versions, compare-and-swap aliases, audit trail.

Layout under the store (one model name per `models/<name>/`):

    models/<name>/versions/<version>/claim.json         version number taken (create-only)
    models/<name>/versions/<version>/model.safetensors  the weights, written second
    models/<name>/versions/<version>/manifest.json      written last: the version exists from here
    models/<name>/next-version.json                     hint for allocation, never authoritative
    models/<name>/aliases/<alias>.json                  pointer + history, changed by CAS only
    models/<name>/audit/<time>-<id>.json                one record per promote or rollback
    models/<name>/checkpoint.json                       where training resumes (see fl.rounds)
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from fl.errors import AliasMoved, ConfigError, ObjectNotFound, PreconditionFailed, RegistryError
from fl.integrity import verify_sha256
from fl.serialization import sha256_hex, weights_from_bytes, weights_to_bytes
from fl.store.base import ObjectStore
from fl.weights import Weights

DEFAULT_ALIAS = "production"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CAS_ATTEMPTS = 64
_ANY = object()  # "no expectation" for expected_from, where None means "alias unset"
# Events kept inside an alias object (the audit log keeps them all); bounds the CAS payload.
ALIAS_HISTORY_LIMIT = 500


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, indent=2, sort_keys=True).encode()


def validate_name(kind: str, value: str) -> str:
    if kind == "alias" and isinstance(value, str) and value.isascii() and value.isdigit():
        raise ConfigError(f"invalid alias name {value!r}: it would read as a version number")
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(
            f"invalid {kind} name {value!r}: use letters, digits, '.', '_' or '-' "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return value


@dataclass(frozen=True)
class AliasChange:
    """What a promote or rollback did. `changed` is False when the alias already pointed there."""

    model: str
    alias: str
    action: str
    from_version: int | None
    to_version: int
    changed: bool
    actor: str
    reason: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Registry:
    """Versions, aliases and audit records of one model name in one store."""

    def __init__(self, store: ObjectStore, model: str = "default") -> None:
        self.store = store
        self.model = validate_name("model", model)
        self.prefix = f"models/{model}/"

    # ----- keys -----------------------------------------------------------------------------
    def version_prefix(self, version: int) -> str:
        return f"{self.prefix}versions/{version}/"

    def model_key(self, version: int) -> str:
        return self.version_prefix(version) + "model.safetensors"

    def manifest_key(self, version: int) -> str:
        return self.version_prefix(version) + "manifest.json"

    def alias_key(self, alias: str) -> str:
        return f"{self.prefix}aliases/{validate_name('alias', alias)}.json"

    # ----- versions -------------------------------------------------------------------------
    def exists(self) -> bool:
        """True once any version of this model has been claimed."""
        return self.latest_claimed() > 0

    def _hint(self) -> int:
        try:
            data = self.store.get(self.prefix + "next-version.json").data
            return max(1, int(json.loads(data)["next"]))
        except ObjectNotFound:
            return 1
        except (ValueError, KeyError, TypeError):
            return 1  # a damaged hint only costs extra probes

    def _advance_hint(self, next_version: int) -> None:
        key = self.prefix + "next-version.json"
        for _ in range(_CAS_ATTEMPTS):
            try:
                current = self.store.get(key)
            except ObjectNotFound:
                try:
                    self.store.put_if_absent(key, _dumps({"next": next_version}))
                    return
                except PreconditionFailed:
                    continue
            try:
                if int(json.loads(current.data)["next"]) >= next_version:
                    return
            except (ValueError, KeyError, TypeError):
                pass
            try:
                self.store.put_if_match(key, _dumps({"next": next_version}), current.token)
                return
            except PreconditionFailed:
                continue

    def _allocate(self, run_id: str) -> int:
        """Take the next free version number with a create-only claim; never reuses a number."""
        version = self._hint()
        claim = _dumps({"run_id": run_id, "claimed_at": utc_now()})
        while True:
            try:
                self._create(self.version_prefix(version) + "claim.json", claim)
                break
            except PreconditionFailed:
                version += 1
        self._advance_hint(version + 1)
        return version

    def latest_claimed(self) -> int:
        """Highest version number taken so far (0 if none); probes upward from the hint."""
        version = self._hint()
        while version > 1 and not self.store.exists(
            self.version_prefix(version - 1) + "claim.json"
        ):
            version -= 1  # hint ahead of reality (e.g. the store was copied partially)
        while self.store.exists(self.version_prefix(version) + "claim.json"):
            version += 1
        return version - 1

    def register(
        self,
        weights: Weights,
        *,
        run_id: str,
        metrics: dict[str, Any],
        fields: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store weights as a new version (see `register_bytes`)."""
        return self.register_bytes(
            weights_to_bytes(weights), run_id=run_id, metrics=metrics, fields=fields
        )

    def register_bytes(
        self,
        data: bytes,
        *,
        run_id: str,
        metrics: dict[str, Any],
        fields: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store safetensors bytes as a new version: claim a number, write the model, then the
        manifest. `fields` adds manifest entries (round, parent_version, config, gate, ...).

        A crash before the manifest leaves a claimed number with no visible version; readers
        skip it and the number is never reused.
        """
        weights_from_bytes(data, source="model to register")  # refuse anything but safetensors
        version = self._allocate(run_id)
        self._create(self.model_key(version), data)
        manifest = {
            **(fields or {}),
            "version": version,
            "model": self.model,
            "sha256": sha256_hex(data),
            "size": len(data),
            "metrics": metrics,
            "run_id": run_id,
            "created_at": utc_now(),
        }
        self._create(self.manifest_key(version), _dumps(manifest))
        return manifest

    def manifest(self, version: int) -> dict[str, Any]:
        try:
            manifest: dict[str, Any] = json.loads(self.store.get(self.manifest_key(version)).data)
        except ObjectNotFound:
            raise RegistryError(
                f"model {self.model!r} has no version {version} in {self.store.url}"
            ) from None
        except ValueError:
            raise RegistryError(
                f"manifest of model {self.model!r} version {version} is not JSON"
            ) from None
        return manifest

    def iter_versions(self, before: int | None = None) -> Iterator[dict[str, Any]]:
        """Manifests newest first, starting below `before` (exclusive); skips unfinished claims."""
        top = self.latest_claimed()
        start = top if before is None else min(top, before - 1)
        for version in range(start, 0, -1):
            try:
                yield json.loads(self.store.get(self.manifest_key(version)).data)
            except ObjectNotFound:
                continue

    def list_versions(self, limit: int = 50, before: int | None = None) -> list[dict[str, Any]]:
        """One page of manifests, newest first; pass the last version seen as `before`."""
        page: list[dict[str, Any]] = []
        for manifest in self.iter_versions(before):
            page.append(manifest)
            if len(page) >= limit:
                break
        return page

    def uri(self, version: int) -> str:
        return self.store.uri(self.model_key(version))

    def resolve(self, ref: int | str) -> int:
        """A version number, a digit string, or an alias name → the version number."""
        if isinstance(ref, int) or (isinstance(ref, str) and re.fullmatch(r"[0-9]+", ref)):
            version = int(ref)
            self.manifest(version)
            return version
        state = self._read_alias(ref)
        if state is None:
            raise RegistryError(f"model {self.model!r} has no alias {ref!r}")
        return int(state[0]["version"])

    def load_bytes(self, ref: int | str) -> tuple[bytes, dict[str, Any]]:
        """The stored model bytes, verified against the SHA-256 in the manifest."""
        is_number = isinstance(ref, int) or re.fullmatch(r"[0-9]+", str(ref))
        version = int(ref) if is_number else self.resolve(ref)
        manifest = self.manifest(version)  # raises for an unknown version
        try:
            data = self.store.get(self.model_key(version)).data
        except ObjectNotFound:
            raise RegistryError(
                f"model {self.model!r} version {version}: model object is missing"
            ) from None
        verify_sha256(data, manifest["sha256"], f"model {self.model!r} version {version}")
        return data, manifest

    def load(self, ref: int | str) -> tuple[Weights, dict[str, Any]]:
        """Weights and manifest of a version or alias; raises `IntegrityError` on any mismatch."""
        data, manifest = self.load_bytes(ref)
        source = f"model {self.model!r} version {manifest['version']}"
        return weights_from_bytes(data, source=source), manifest

    # ----- aliases --------------------------------------------------------------------------
    def _read_alias(self, alias: str) -> tuple[dict[str, Any], str] | None:
        try:
            obj = self.store.get(self.alias_key(alias))
        except ObjectNotFound:
            return None
        return json.loads(obj.data), obj.token

    def alias_state(self, alias: str = DEFAULT_ALIAS) -> dict[str, Any] | None:
        state = self._read_alias(alias)
        return None if state is None else state[0]

    def aliases(self) -> dict[str, int]:
        """Every alias of this model and the version it points to."""
        result: dict[str, int] = {}
        for key in self.store.list(f"{self.prefix}aliases/"):
            name = key.rsplit("/", 1)[-1].removesuffix(".json")
            state = self.alias_state(name)
            if state is not None:
                result[name] = int(state["version"])
        return result

    def _create(self, key: str, data: bytes) -> None:
        """Create-only write that tolerates its own lost reply: if the object already holds
        exactly these bytes, a retried request of ours landed, and that is success."""
        try:
            self.store.put_if_absent(key, data)
        except PreconditionFailed:
            if self.store.get(key).data != data:
                raise

    def _change_alias(
        self,
        alias: str,
        action: str,
        plan: Callable[[dict[str, Any] | None], tuple[int, list[int]] | None],
        actor: str,
        reason: str,
        *,
        request_id: str | None = None,
        expected_from: int | None | object = _ANY,
    ) -> AliasChange:
        """Read, plan, compare-and-swap; retry on conflict. `plan` returns (target, new stack)
        or None for "already there"; it raises `RegistryError` to refuse.

        Idempotent under retries: the change carries `request_id` (a retried task passes the
        same one), so a change whose reply was lost, or whose audit record was not written, is
        recognised and completed instead of being applied twice. With `expected_from`, the
        alias moves only while it still points at that version (None: while it is unset).
        """
        key = self.alias_key(alias)
        event_id = request_id or uuid.uuid4().hex
        for _ in range(_CAS_ATTEMPTS):
            current = self._read_alias(alias)
            state, token = current if current else (None, None)
            history = (state or {}).get("history", [])
            if history and history[-1].get("id") == event_id:
                return self._complete(alias, history[-1])
            from_version = None if state is None else int(state["version"])
            if expected_from is not _ANY and from_version != expected_from:
                raise AliasMoved(
                    f"{alias!r} of model {self.model!r} is at version {from_version}, not "
                    f"{expected_from} as when this change was decided; decide again"
                )
            planned = plan(state)
            at = utc_now()
            if planned is None:
                assert from_version is not None
                return AliasChange(self.model, alias, action, from_version, from_version,
                                   False, actor, reason, at)  # fmt: skip
            target, stack = planned
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            event = {"id": event_id, "action": action, "from": from_version, "to": target,
                     "actor": actor, "reason": reason, "at": at,
                     "audit_key": f"{self.prefix}audit/{stamp}-{event_id[:16]}.json"}  # fmt: skip
            new_state = {
                "model": self.model,
                "alias": alias,
                "version": target,
                "updated_at": at,
                "stack": stack,
                "history": [*history, event][-ALIAS_HISTORY_LIMIT:],
            }
            try:
                if token is None:
                    self.store.put_if_absent(key, _dumps(new_state))
                else:
                    self.store.put_if_match(key, _dumps(new_state), token)
            except PreconditionFailed:
                continue  # someone else changed it, or our own reply was lost: re-read
            return self._complete(alias, event)
        raise RegistryError(f"alias {alias!r} of model {self.model!r} is changing too fast; retry")

    def _complete(self, alias: str, event: dict[str, Any]) -> AliasChange:
        """Write the audit record of an alias change (again, harmlessly, after a retry)."""
        change = AliasChange(self.model, alias, event["action"], event["from"], event["to"],
                             True, event["actor"], event["reason"], event["at"])  # fmt: skip
        self._create(event["audit_key"], _dumps(change.to_dict()))
        return change

    def promote(
        self,
        version: int,
        *,
        alias: str = DEFAULT_ALIAS,
        actor: str = "unknown",
        reason: str = "",
        request_id: str | None = None,
        expected_from: int | None | object = _ANY,
    ) -> AliasChange:
        """Point `alias` at `version`; the previous target goes on the rollback stack.

        `expected_from`: move only if the alias still points where the gate saw it.
        """
        self.manifest(version)  # refuse unknown versions

        def plan(state: dict[str, Any] | None) -> tuple[int, list[int]] | None:
            if state is None:
                return version, []
            if int(state["version"]) == version:
                return None
            return version, [*state["stack"], int(state["version"])]

        return self._change_alias(
            alias,
            "promote",
            plan,
            actor,
            reason,
            request_id=request_id,
            expected_from=expected_from,
        )

    def rollback(
        self,
        *,
        steps: int | None = None,
        to: int | None = None,
        alias: str = DEFAULT_ALIAS,
        actor: str = "unknown",
        reason: str = "",
        verify: Callable[[int], None] | None = None,
        request_id: str | None = None,
        expected_from: int | None | object = _ANY,
    ) -> AliasChange:
        """Move `alias` back to a version it pointed to before (never to one it never held).

        `steps=N` goes N promotions back; `to=V` goes back to V (a no-op if already there).
        `verify(version)` runs before the alias moves and may raise to refuse the target; the
        alias then moves to exactly the version verified, even if it changed meanwhile.
        """
        if verify is not None:
            target = self.rollback_target(steps=steps, to=to, alias=alias)
            if target is not None:
                verify(target)
                steps, to = None, target

        def plan(state: dict[str, Any] | None) -> tuple[int, list[int]] | None:
            return self._rollback_plan(state, steps, to, alias)

        return self._change_alias(
            alias,
            "rollback",
            plan,
            actor,
            reason,
            request_id=request_id,
            expected_from=expected_from,
        )

    def rollback_target(
        self, *, steps: int | None = None, to: int | None = None, alias: str = DEFAULT_ALIAS
    ) -> int | None:
        """The version a rollback would move to now, None if already there; raises if none."""
        current = self._read_alias(alias)
        planned = self._rollback_plan(current[0] if current else None, steps, to, alias)
        return None if planned is None else planned[0]

    def _rollback_plan(
        self, state: dict[str, Any] | None, steps: int | None, to: int | None, alias: str
    ) -> tuple[int, list[int]] | None:
        if steps is not None and to is not None:
            raise RegistryError("give steps or to_version, not both")
        if steps is not None and steps < 1:
            raise RegistryError(f"steps must be at least 1, got {steps}")
        if state is None:
            raise RegistryError(
                f"model {self.model!r} has no {alias!r} alias yet: nothing to roll back"
            )
        stack = [int(v) for v in state["stack"]]
        if to is not None:
            if int(state["version"]) == to:
                return None
            if to not in stack:
                earlier = ", ".join(map(str, stack)) or "none"
                raise RegistryError(
                    f"version {to} is not an earlier target of {alias!r} for model "
                    f"{self.model!r} (earlier targets: {earlier}); use promote to serve it"
                )
            index = len(stack) - 1 - stack[::-1].index(to)
            return to, stack[:index]
        steps = steps or 1
        if len(stack) < steps:
            raise RegistryError(
                f"model {self.model!r} {alias!r} has {len(stack)} earlier version(s) "
                f"(at version {state['version']}): nothing to roll back {steps} step(s) to"
            )
        return stack[-steps], stack[:-steps]

    # ----- audit ----------------------------------------------------------------------------
    def audit_log(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Audit records, newest first."""
        keys = sorted(self.store.list(f"{self.prefix}audit/"), reverse=True)
        if limit is not None:
            keys = keys[:limit]
        return [json.loads(self.store.get(key).data) for key in keys]
