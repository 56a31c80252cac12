"""Client datasets: a synthetic task, scikit-learn's digits, or per-client npz files.

`load_federation` returns every client's tensors plus a holdout set and a fingerprint of all of
it. Synthetic and digits data are pooled and split over clients by a partitioner; npz clients
come as given. Everything is deterministic in (config, seed), and cached per process because
tasks call `load_federation` every round.

An npz directory without `holdout.npz` gets a holdout carved from the clients' pooled data. That
is for simulation only: real clients would never hand their examples to the server.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl.config import DataConfig
from fl.errors import ConfigError
from fl.partition import partition
from fl.sampling import derive_seed

_CLIENT_FILE = re.compile(r"client_(\d+)\.npz")
_HOLDOUT_FILE = "holdout.npz"
_CACHE_SIZE = 8


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's training examples: features `x` (float32, N x D) and labels `y` (int64, N)."""

    client_id: int
    x: torch.Tensor
    y: torch.Tensor

    @property
    def num_examples(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class Federation:
    """All clients (ids 0..N-1, in order), the server's holdout set, and their fingerprint.

    The tensors are shared by every caller of `load_federation`: read them, never write them.
    """

    clients: tuple[ClientData, ...]
    holdout_x: torch.Tensor
    holdout_y: torch.Tensor
    num_classes: int
    input_dim: int
    fingerprint: str

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def client(self, client_id: int) -> ClientData:
        if not 0 <= client_id < len(self.clients):
            last = len(self.clients) - 1
            raise ConfigError(f"client {client_id} does not exist; client ids run from 0 to {last}")
        return self.clients[client_id]


# ----------------------------------------------------------------------------- sources


@dataclass
class _Pooled:
    """A source's output before splitting: training arrays, holdout arrays, class count."""

    x: np.ndarray
    y: np.ndarray
    holdout_x: np.ndarray
    holdout_y: np.ndarray
    num_classes: int


def synthetic_samples(
    num_samples: int, dim: int, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's task: N(0, 1) features, uniform labels, +2.0 on feature `label % dim`."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, dim, generator=generator)
    y = torch.randint(0, num_classes, (num_samples,), generator=generator)
    x[torch.arange(num_samples), y % dim] += 2.0
    return x, y


def _load_synthetic(cfg: DataConfig, seed: int) -> _Pooled:
    total = cfg.num_clients * cfg.samples_per_client
    x, y = synthetic_samples(total, cfg.dim, cfg.num_classes, derive_seed("synthetic", seed))
    hx, hy = synthetic_samples(
        cfg.holdout_samples, cfg.dim, cfg.num_classes, derive_seed("synthetic-holdout", seed)
    )
    return _Pooled(x.numpy(), y.numpy(), hx.numpy(), hy.numpy(), cfg.num_classes)


def _load_digits(cfg: DataConfig, seed: int) -> _Pooled:
    from sklearn.datasets import load_digits  # imported here: sklearn takes a second to import
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = digits.data.astype(np.float64), digits.target.astype(np.int64)
    train, holdout = train_test_split(
        np.arange(len(y)),
        test_size=cfg.holdout_fraction,
        stratify=y,
        random_state=derive_seed("digits-holdout", seed) % 2**32,
    )
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std < 1e-8] = 1.0  # pixels that are blank in every training image
    x = ((x - mean) / std).astype(np.float32)
    return _Pooled(x[train], y[train], x[holdout], y[holdout], int(y.max()) + 1)


_SOURCES: dict[str, Callable[[DataConfig, int], _Pooled]] = {
    "synthetic": _load_synthetic,
    "digits": _load_digits,
}


# ----------------------------------------------------------------------------- npz files


def _npz_listing(path: str) -> tuple[list[str], Callable[[str], bytes]]:
    """File names at `path` (a directory, or a store URL) and a function reading one of them."""
    if "://" in path:
        from fl.store import open_store  # only the npz source touches the object store

        store = open_store(path)
        names = sorted(key for key in store.list("") if "/" not in key)
        return names, lambda name: store.get(name).data
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"data.path {path!r} is not a directory of client_<id>.npz files")
    names = sorted(entry.name for entry in directory.iterdir() if entry.is_file())
    return names, lambda name: (directory / name).read_bytes()


def _parse_npz(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `x` (as float32, N x D) and `y` (as int64) of one npz file, validated."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ConfigError(f"{name} is a single array, not an npz archive of 'x' and 'y'")
        with loaded as archive:
            missing = sorted({"x", "y"} - set(archive.files))
            if missing:
                raise ConfigError(f"{name} lacks array {missing[0]!r}; it must hold 'x' and 'y'")
            x, y = archive["x"], archive["y"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{name} is not a readable npz file of plain arrays: {err}") from None
    if x.dtype.kind not in "fiub" or x.ndim < 2 or len(x) == 0:
        raise ConfigError(f"{name}: 'x' must be a non-empty numeric array of shape (N, features)")
    if y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise ConfigError(f"{name}: 'y' must hold {len(x)} integer labels, one per row of 'x'")
    if y.min() < 0:
        raise ConfigError(f"{name}: labels must be non-negative, found {int(y.min())}")
    x = x.reshape(len(x), -1).astype(np.float32)
    if not np.isfinite(x).all():
        raise ConfigError(f"{name}: 'x' holds NaN or infinite values")
    return x, y.astype(np.int64)


def _carve_holdout(
    xs: list[np.ndarray], ys: list[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Simulation only: take a stratified `fraction` of the pooled client data as the holdout."""
    from sklearn.model_selection import train_test_split

    pooled_y = np.concatenate(ys)
    positions = np.arange(len(pooled_y))
    random_state = derive_seed("npz-holdout", seed) % 2**32
    try:
        _, held = train_test_split(
            positions, test_size=fraction, stratify=pooled_y, random_state=random_state
        )
    except ValueError:  # a class too rare to stratify: fall back to a plain random split
        _, held = train_test_split(positions, test_size=fraction, random_state=random_state)
    in_holdout = np.zeros(len(pooled_y), dtype=bool)
    in_holdout[held] = True
    kept_x, kept_y, start = [], [], 0
    for client, (x, y) in enumerate(zip(xs, ys, strict=True)):
        keep = ~in_holdout[start : start + len(y)]
        if not keep.any():
            raise ConfigError(f"client_{client}.npz is too small to lose a holdout share")
        kept_x.append(x[keep])
        kept_y.append(y[keep])
        start += len(y)
    return kept_x, kept_y, np.concatenate(xs)[held], pooled_y[held]


def _load_npz(
    cfg: DataConfig, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], _Pooled, bool]:
    """Client arrays as given; the holdout from `holdout.npz`, or carved (flag True) without it."""
    path = str(cfg.path)
    listing, read = _npz_listing(path)
    names = set(listing)
    count = sum(1 for name in names if _CLIENT_FILE.fullmatch(name))
    if count == 0:
        raise ConfigError(f"data.path {path!r} holds no client_<id>.npz files")
    for client in range(count):
        if f"client_{client}.npz" not in names:
            raise ConfigError(
                f"data.path {path!r} lacks client_{client}.npz; client files must be numbered "
                "from client_0.npz without gaps"
            )
    if count != cfg.num_clients:
        raise ConfigError(
            f"data.path {path!r} holds {count} client files but data.num_clients is "
            f"{cfg.num_clients}; set data.num_clients={count}"
        )
    arrays = [_parse_npz(read(f"client_{c}.npz"), f"client_{c}.npz") for c in range(count)]
    xs, ys = [a[0] for a in arrays], [a[1] for a in arrays]
    carved = _HOLDOUT_FILE not in names
    if not carved:
        hx, hy = _parse_npz(read(_HOLDOUT_FILE), _HOLDOUT_FILE)
    else:
        xs, ys, hx, hy = _carve_holdout(xs, ys, cfg.holdout_fraction, seed)
    for name, x in [*((f"client_{c}.npz", x) for c, x in enumerate(xs)), (_HOLDOUT_FILE, hx)]:
        if x.shape[1] != xs[0].shape[1]:
            raise ConfigError(
                f"{name} has {x.shape[1]} features per example, client_0.npz has {xs[0].shape[1]}"
            )
    num_classes = int(max(int(y.max()) for y in [*ys, hy])) + 1
    if num_classes < 2:
        raise ConfigError(f"data.path {path!r} holds a single class; at least two are needed")
    return xs, ys, _Pooled(np.empty(0), np.empty(0), hx, hy, num_classes), carved


# ----------------------------------------------------------------------------- federation


def _fingerprint_fields(cfg: DataConfig, carved_holdout: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {"source": cfg.source, "num_clients": cfg.num_clients}
    if cfg.source != "npz":
        fields["partitioner"] = cfg.partitioner
        if cfg.partitioner == "dirichlet":
            fields["alpha"] = cfg.alpha
        if cfg.partitioner == "shards":
            fields["shards_per_client"] = cfg.shards_per_client
    if cfg.source == "synthetic":
        for name in ("samples_per_client", "holdout_samples", "dim", "num_classes"):
            fields[name] = getattr(cfg, name)
    if cfg.source == "digits" or carved_holdout:
        fields["holdout_fraction"] = cfg.holdout_fraction
    return fields


def _hash_array(digest: Any, array: np.ndarray | torch.Tensor) -> None:
    if isinstance(array, torch.Tensor):
        array = array.numpy()
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.data)


def _features(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


def _build_federation(cfg: DataConfig, seed: int) -> Federation:
    indices: list[np.ndarray] | None = None
    if cfg.source == "npz":
        xs, ys, pooled, carved = _load_npz(cfg, seed)
    else:
        pooled = _SOURCES[cfg.source](cfg, seed)
        indices = partition(pooled.y, cfg, seed)
        xs, ys, carved = [pooled.x[i] for i in indices], [pooled.y[i] for i in indices], False
    clients = tuple(
        ClientData(c, _features(x), _labels(y)) for c, (x, y) in enumerate(zip(xs, ys, strict=True))
    )
    holdout_x, holdout_y = _features(pooled.holdout_x), _labels(pooled.holdout_y)
    digest = hashlib.sha256()
    header = {"seed": seed, **_fingerprint_fields(cfg, carved)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    for client in clients:
        digest.update(f"client {client.client_id}".encode())
        if indices is not None:
            _hash_array(digest, indices[client.client_id].astype("<i8"))
        _hash_array(digest, client.x)
        _hash_array(digest, client.y)
    _hash_array(digest, holdout_x)
    _hash_array(digest, holdout_y)
    return Federation(
        clients=clients,
        holdout_x=holdout_x,
        holdout_y=holdout_y,
        num_classes=pooled.num_classes,
        input_dim=int(clients[0].x.shape[1]),
        fingerprint=digest.hexdigest(),
    )


_cache: OrderedDict[tuple[str, int], Federation] = OrderedDict()
_cache_lock = threading.Lock()


def load_federation(cfg: DataConfig, seed: int) -> Federation:
    """The clients and holdout described by `cfg`, built once per (config, seed) per process.

    Thread-safe: concurrent callers with the same arguments share one build and one result.
    """
    key = (cfg.model_dump_json(), seed)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        federation = _build_federation(cfg, seed)
        _cache[key] = federation
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return federation


def clear_federation_cache() -> None:
    """Forget cached federations (tests, or after npz files changed on disk)."""
    with _cache_lock:
        _cache.clear()
