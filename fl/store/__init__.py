"""Object stores: one protocol, a local-directory backend and an S3 backend.

`open_store` turns a URL (or a `StoreConfig`) into a store:

* `s3://bucket` or `s3://bucket/prefix` -> `S3Store`
* `file:///absolute/dir`, `file://relative/dir` or a plain path -> `LocalStore`
* `None` -> `StoreConfig().resolved_url()`: `$FEDSHIP_STORE`, else `./.fedship`
"""

from __future__ import annotations

import os
import re

from fl.config import StoreConfig
from fl.errors import ConfigError
from fl.store.base import ObjectStore, StoredObject
from fl.store.local import LocalStore
from fl.store.s3 import S3Client, S3Store

__all__ = ["LocalStore", "ObjectStore", "S3Store", "StoredObject", "open_store"]

ACCEPTED_FORMS = "s3://bucket[/prefix], file:///absolute/dir, file://relative/dir or a plain path"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")  # two or more letters: not a drive letter


def open_store(
    target: str | os.PathLike[str] | StoreConfig | None = None, *, client: S3Client | None = None
) -> ObjectStore:
    """Open the store a URL or `StoreConfig` names; `client` is used for `s3://` URLs only.

    A `StoreConfig` also carries the S3 endpoint, region, retry policy and server-side
    encryption; a bare URL uses their defaults (and the standard AWS environment variables).
    """
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    config = target if isinstance(target, StoreConfig) else StoreConfig(url=target)
    url = config.resolved_url()
    if not url.strip():
        raise ConfigError(f"store URL {url!r} is empty; use {ACCEPTED_FORMS}")
    scheme = _SCHEME.match(url)
    if scheme is None:
        return LocalStore(url)
    name = scheme.group(1).lower()
    if not url[scheme.end() :].startswith("//") or name not in ("s3", "file"):
        raise ConfigError(f"store URL {url!r} is not supported; use {ACCEPTED_FORMS}")
    rest = url[scheme.end() + 2 :]
    if name == "file":
        if not rest:
            raise ConfigError(f"store URL {url!r} names no directory; use {ACCEPTED_FORMS}")
        return LocalStore("file://" + rest)
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ConfigError(f"store URL {url!r} names no bucket; use {ACCEPTED_FORMS}")
    if "?" in rest or "#" in rest:
        raise ConfigError(f"store URL {url!r} must not carry a query or fragment")
    try:
        return S3Store(bucket, prefix, client, config=config)
    except ConfigError as err:
        raise ConfigError(f"store URL {url!r}: {err}") from None
