"""A directory on the local filesystem as an object store.

Keys map to files under the root. Every write goes through a temporary file in the key's own
directory, so a reader sees the old bytes or the new bytes, never a part:

* `put` writes and fsyncs the temp file, then `os.replace`s it over the key;
* `put_if_absent` hard-links the temp file to the key (`os.link` refuses an existing name, which
  is the atomic create-only test) and removes the temp name;
* `put_if_match`, `put` and `delete` hold a per-key `filelock.FileLock`, so a compare-and-swap
  is atomic against every other writer in any thread or process on the same host.

The token is the SHA-256 of the content. Like an S3 ETag it changes whenever the bytes change and
not when the same bytes are written again, so a CAS compares values, which is what callers need.

Names beginning with `.fedship-` are reserved for temp and lock files (`<root>/.fedship-locks/`)
and are never listed or accepted as key segments. Hard links need a POSIX-style filesystem; NFS
and SMB mounts with unreliable `flock` are not supported for concurrent writers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from filelock import FileLock, Timeout

from fl.errors import ConfigError, ObjectNotFound, PreconditionFailed, StoreError
from fl.store.base import StoredObject

RESERVED_PREFIX = ".fedship-"
LOCK_DIR = f"{RESERVED_PREFIX}locks"
LOCK_TIMEOUT_SECONDS = 60.0
LOCK_POLL_SECONDS = 0.002
LOCK_STRIPE_HEX = 2


def check_key(key: str) -> str:
    """Return `key` if it is a portable object key, else raise `StoreError` naming it.

    A key is `/`-separated, non-empty, with no leading `/`, no empty, `.` or `..` segments, no
    backslashes and no segment starting with `.fedship-`. The same rule holds for every backend,
    so a store can be copied between S3 and a directory without renaming anything.
    """
    if not isinstance(key, str) or not key:
        raise StoreError(f"object key {key!r} is invalid: it must be a non-empty string")
    if "\\" in key or "\x00" in key:
        raise StoreError(f"object key {key!r} is invalid: backslashes and NUL are not allowed")
    if key.startswith("/"):
        raise StoreError(f"object key {key!r} is invalid: it must not start with '/'")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise StoreError(
                f"object key {key!r} is invalid: segments must not be empty, '.' or '..'"
            )
        if segment.startswith(RESERVED_PREFIX):
            raise StoreError(
                f"object key {key!r} is invalid: segments starting with {RESERVED_PREFIX!r} "
                "are reserved"
            )
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix is a key, a key ending in `/`, or empty (everything)."""
    if prefix == "":
        return prefix
    try:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    except StoreError:
        raise StoreError(
            f"listing prefix {prefix!r} is invalid: it must be empty, a key, or a key and '/'"
        ) from None
    return prefix


def path_from_url(url: str | os.PathLike[str]) -> Path:
    """The directory named by `file:///abs`, `file://relative` or a plain path (`~` expanded).

    Everything after `file://` is the path, percent-decoded, so `file://data/store` is the
    relative directory `data/store` and `LocalStore(...).url` round-trips.
    """
    text = os.fspath(url)
    if text.startswith("file://"):
        text = unquote(text.removeprefix("file://"))
    if not text:
        raise ConfigError(f"local store location {os.fspath(url)!r} names no directory")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~user for a user that does not exist
        raise ConfigError(f"local store location {text!r}: cannot expand '~' there") from None


def content_token(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStore:
    """An `ObjectStore` over a directory; the directory is created on the first write."""

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        """`durable=False` skips fsync: for scratch objects that a crash may lose anyway."""
        self.root = path_from_url(root).absolute()
        self.durable = durable
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"local store root {str(self.root)!r} exists but is not a directory")
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: str) -> StoredObject:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._check_root()
            raise ObjectNotFound(f"object {key!r} not found in {self.url}") from None
        except OSError as err:
            raise self._os_error("read", key, err) from err
        return StoredObject(data=data, token=content_token(data))

    def exists(self, key: str) -> bool:
        path = self._path(key)
        self._check_root()
        return path.is_file()

    def list(self, prefix: str) -> Iterator[str]:
        check_prefix(prefix)
        self._check_root()
        # Walk only the deepest directory the prefix fully names; filter the rest by string.
        start = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(RESERVED_PREFIX)]
            relative = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if relative == "." else f"{relative}/"
            keys.extend(
                base + name
                for name in filenames
                if not name.startswith(RESERVED_PREFIX) and (base + name).startswith(prefix)
            )
        return iter(sorted(keys))

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    # -- writes -----------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> str:
        path = self._path(key)
        tmp = self._write_temp(key, path, data)  # outside the lock: only the rename is guarded
        try:
            with self._lock(key):
                os.replace(tmp, path)
        except OSError as err:
            raise self._os_error("write", key, err) from err
        finally:
            _remove_quietly(tmp)  # already renamed on success
        self._sync_dir(path.parent)
        return content_token(data)

    def put_if_absent(self, key: str, data: bytes) -> str:
        path = self._path(key)
        tmp = self._write_temp(key, path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            if path.is_dir():
                raise StoreError(
                    f"object key {key!r} is a directory of other keys in {self.url}; "
                    "a local store cannot hold both 'k' and 'k/...'"
                ) from None
            raise PreconditionFailed(f"object {key!r} already exists in {self.url}") from None
        except OSError as err:
            raise self._os_error("create", key, err) from err
        finally:
            _remove_quietly(tmp)
        self._sync_dir(path.parent)
        return content_token(data)

    def put_if_match(self, key: str, data: bytes, token: str) -> str:
        path = self._path(key)
        with self._lock(key):
            try:
                current = path.read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                self._check_root()
                raise PreconditionFailed(
                    f"object {key!r} does not exist in {self.url}; nothing to compare-and-swap"
                ) from None
            if content_token(current) != token:
                raise PreconditionFailed(
                    f"object {key!r} in {self.url} changed since token {token[:12]}... was read"
                )
            tmp = self._write_temp(key, path, data)
            try:
                os.replace(tmp, path)
            except OSError as err:
                _remove_quietly(tmp)
                raise self._os_error("write", key, err) from err
            self._sync_dir(path.parent)
        return content_token(data)

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._check_root()
        if not path.is_file():
            return  # nothing to remove: the delete takes effect here, without creating the root
        with self._lock(key):
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return
            except OSError as err:
                raise self._os_error("delete", key, err) from err
            self._sync_dir(path.parent)

    # -- internals --------------------------------------------------------------------------

    def _sync_dir(self, directory: Path) -> None:
        if self.durable:
            _fsync_dir(directory)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"local store root {str(self.root)!r} exists but is not a directory")

    def _os_error(self, action: str, key: str, err: OSError) -> StoreError:
        self._check_root()
        return StoreError(f"could not {action} object {key!r} in {self.url}: {err.strerror or err}")

    def _write_temp(self, key: str, path: Path, data: bytes) -> Path:
        """Write `data` to a fsynced temp file beside `path`; the caller renames or links it."""
        self._check_root()
        tmp = path.parent / f"{RESERVED_PREFIX}tmp-{uuid.uuid4().hex}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as handle:
                handle.write(data)
                handle.flush()
                if self.durable:
                    os.fsync(handle.fileno())
        except OSError as err:
            _remove_quietly(tmp)
            raise self._os_error("write", key, err) from err
        return tmp

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """Hold the key's lock; a fresh `FileLock` per call, so threads exclude each other too."""
        self._check_root()
        lock_dir = self.root / LOCK_DIR
        # 256 lock stripes: a bounded set of lock files however many keys the store holds.
        name = hashlib.sha256(key.encode()).hexdigest()[:LOCK_STRIPE_HEX]
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(
                lock_dir / f"{name}.lock",
                timeout=LOCK_TIMEOUT_SECONDS,
                poll_interval=LOCK_POLL_SECONDS,
                thread_local=False,
            )
            lock.acquire()
        except Timeout:
            raise StoreError(
                f"timed out after {LOCK_TIMEOUT_SECONDS:.0f}s waiting for the lock on {key!r} "
                f"in {self.url}"
            ) from None
        except OSError as err:
            raise self._os_error("lock", key, err) from err
        try:
            yield
        finally:
            lock.release()


def _fsync_dir(directory: Path) -> None:
    """Make a rename or link durable; some filesystems refuse directory fsync, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
