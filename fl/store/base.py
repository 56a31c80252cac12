"""The object-store protocol every backend implements.

Keys are `/`-separated strings without a leading slash (`models/default/aliases/production.json`).
A *token* is an opaque version marker of an object's current content (an S3 ETag, or a content
hash for the local store); `put_if_match` succeeds only while the token is still current.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    token: str


@runtime_checkable
class ObjectStore(Protocol):
    url: str

    def get(self, key: str) -> StoredObject:
        """Read an object; raises `ObjectNotFound`."""
        ...

    def put(self, key: str, data: bytes) -> str:
        """Write atomically (readers see old or new bytes, never a part); returns the token."""
        ...

    def put_if_absent(self, key: str, data: bytes) -> str:
        """Create-only write; raises `PreconditionFailed` if the key exists."""
        ...

    def put_if_match(self, key: str, data: bytes, token: str) -> str:
        """Compare-and-swap; raises `PreconditionFailed` if the object changed or is gone."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under a prefix, in lexicographic order."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove a key; removing a missing key is not an error."""
        ...

    def uri(self, key: str) -> str:
        """A URL naming the object (`file:///...` or `s3://bucket/prefix/key`)."""
        ...
