"""One behaviour suite for every `ObjectStore`: local directory, moto in-process, moto over HTTP."""

from __future__ import annotations

import os
import random

import pytest

from fl.errors import ObjectNotFound, PreconditionFailed, StoreError
from fl.store import ObjectStore

KEYS = [
    "models/a/v0001.safetensors",
    "models/a/v0002.safetensors",
    "models/ab/v0001.safetensors",
    "models/b/manifest.json",
    "models.json",
    "rounds/0003/client-7.bin",
    "rounds/0010/client-1.bin",
    "z",
]


def test_implements_protocol(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x01payload\xff", bytes(range(256)) * 3, os.urandom(5 * 1024 * 1024)],
    ids=["empty", "small", "all-bytes", "5MB"],
)
def test_put_get_round_trip(store: ObjectStore, data: bytes) -> None:
    token = store.put("blobs/x.bin", data)

    stored = store.get("blobs/x.bin")

    assert stored.data == data
    assert stored.token == token


def test_put_overwrites_and_changes_token(store: ObjectStore) -> None:
    first = store.put("k", b"one")
    second = store.put("k", b"two")

    assert store.get("k").data == b"two"
    assert second != first


def test_get_missing_raises_object_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound, match="nope/missing.bin"):
        store.get("nope/missing.bin")


def test_put_if_absent_refuses_second_write(store: ObjectStore) -> None:
    token = store.put_if_absent("aliases/production.json", b"original")

    with pytest.raises(PreconditionFailed, match="aliases/production.json"):
        store.put_if_absent("aliases/production.json", b"intruder")

    stored = store.get("aliases/production.json")
    assert (stored.data, stored.token) == (b"original", token)


def test_put_if_match_with_current_token_swaps(store: ObjectStore) -> None:
    old = store.put("counter", b"1")

    new = store.put_if_match("counter", b"2", old)

    stored = store.get("counter")
    assert (stored.data, stored.token) == (b"2", new)
    assert new != old


def test_put_if_match_with_stale_token_changes_nothing(store: ObjectStore) -> None:
    stale = store.put("counter", b"1")
    current = store.put_if_match("counter", b"2", stale)

    with pytest.raises(PreconditionFailed, match="counter"):
        store.put_if_match("counter", b"3", stale)

    stored = store.get("counter")
    assert (stored.data, stored.token) == (b"2", current)


def test_put_if_match_on_missing_key_fails(store: ObjectStore) -> None:
    token = store.put("elsewhere", b"1")

    with pytest.raises(PreconditionFailed, match="counter"):
        store.put_if_match("counter", b"2", token)

    assert not store.exists("counter")


@pytest.mark.parametrize(
    "prefix", ["", "models/", "models/a", "models/a/", "models", "rounds/00", "zz", "q/"]
)
def test_list_is_sorted_and_exact_prefix(store: ObjectStore, prefix: str) -> None:
    for key in random.Random(7).sample(KEYS, len(KEYS)):
        store.put(key, key.encode())

    listed = list(store.list(prefix))

    assert listed == sorted(key for key in KEYS if key.startswith(prefix))


def test_list_hides_bookkeeping_files(store: ObjectStore) -> None:
    token = store.put_if_absent("a/one", b"1")
    store.put_if_match("a/one", b"2", token)
    store.put("a/two", b"2")
    store.put("a/three", b"3")
    store.delete("a/three")
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("a/two", b"again")

    assert list(store.list("")) == ["a/one", "a/two"]


def test_exists(store: ObjectStore) -> None:
    store.put("models/a/v1", b"x")

    assert store.exists("models/a/v1")
    assert not store.exists("models/a")  # a prefix is not an object
    assert not store.exists("models/a/v2")


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("k", b"x")

    store.delete("k")
    store.delete("k")
    store.delete("never/was")

    assert not store.exists("k")
    with pytest.raises(ObjectNotFound):
        store.get("k")
    store.put_if_absent("k", b"again")  # a deleted key can be created again


def test_uri_names_the_key_under_the_store_url(store: ObjectStore) -> None:
    uri = store.uri("models/a/v0001.safetensors")

    assert uri == f"{store.url.rstrip('/')}/models/a/v0001.safetensors"
    assert uri.split("://")[0] in ("file", "s3")


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/", "a/../b", "..", "a/./b", "a\\b", ".fedship-locks/x"]
)
def test_invalid_keys_are_rejected_by_every_operation(store: ObjectStore, key: str) -> None:
    calls = {
        "get": lambda: store.get(key),
        "put": lambda: store.put(key, b"x"),
        "put_if_absent": lambda: store.put_if_absent(key, b"x"),
        "put_if_match": lambda: store.put_if_match(key, b"x", "token"),
        "exists": lambda: store.exists(key),
        "delete": lambda: store.delete(key),
        "uri": lambda: store.uri(key),
    }
    for name, call in calls.items():
        with pytest.raises(StoreError, match="invalid") as raised:
            call()
        assert repr(key) in str(raised.value), name
        assert not isinstance(raised.value, ObjectNotFound | PreconditionFailed), name

    assert list(store.list("")) == []
