from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fl.config import DataConfig, load_config
from fl.data import Federation, clear_federation_cache, load_federation
from fl.errors import ConfigError
from fl.partition import partition_dirichlet, partition_iid, partition_shards

SYNTHETIC = {
    "source": "synthetic",
    "num_clients": 6,
    "samples_per_client": 50,
    "holdout_samples": 40,
}


def _config(**fields: Any) -> DataConfig:
    return DataConfig(**{**SYNTHETIC, **fields})


def _fresh(cfg: DataConfig, seed: int) -> Federation:
    clear_federation_cache()
    return load_federation(cfg, seed)


def _assert_same(a: Federation, b: Federation) -> None:
    assert a.fingerprint == b.fingerprint
    for ca, cb in zip(a.clients, b.clients, strict=True):
        assert torch.equal(ca.x, cb.x) and torch.equal(ca.y, cb.y)
    assert torch.equal(a.holdout_x, b.holdout_x) and torch.equal(a.holdout_y, b.holdout_y)


def _assert_partition(parts: list[np.ndarray], num_samples: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == num_samples
    np.testing.assert_array_equal(np.sort(joined), np.arange(num_samples))


# ----------------------------------------------------------------------------- partitioners


def test_iid_splits_everything_into_near_equal_parts() -> None:
    parts = partition_iid(np.zeros(103), 10, rng=np.random.default_rng(0))
    _assert_partition(parts, 103)
    assert {len(p) for p in parts} == {10, 11}


@pytest.mark.parametrize("num_clients", [10, 50])
def test_dirichlet_gives_no_empty_client_even_at_tiny_alpha(num_clients: int) -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=1437)
    parts = partition_dirichlet(labels, num_clients, alpha=0.05, rng=np.random.default_rng(1))
    _assert_partition(parts, 1437)
    assert min(len(p) for p in parts) >= 10


def test_dirichlet_alpha_controls_label_skew() -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=2000)

    def mean_classes_per_client(alpha: float) -> float:
        parts = partition_dirichlet(labels, 20, alpha=alpha, rng=np.random.default_rng(2))
        return float(np.mean([len(np.unique(labels[p])) for p in parts]))

    assert mean_classes_per_client(0.1) < 5 < mean_classes_per_client(100.0)


def test_shards_give_each_client_few_labels() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition_shards(labels, 20, shards_per_client=2, rng=np.random.default_rng(0))
    _assert_partition(parts, 1000)
    assert {len(p) for p in parts} == {50}
    assert max(len(np.unique(labels[p])) for p in parts) <= 2


@pytest.mark.parametrize(
    ("split", "message"),
    [
        (lambda y, rng: partition_iid(y, 11, rng=rng), "10 training samples into 11"),
        (
            lambda y, rng: partition_shards(y, 4, shards_per_client=3, rng=rng),
            "4 clients x 3 shards",
        ),
        (lambda y, rng: partition_dirichlet(y, 11, alpha=0.5, rng=rng), "into 11 clients"),
        (lambda y, rng: partition_dirichlet(y, 2, alpha=0.5, rng=rng, min_size=6), "at least 6"),
    ],
)
def test_impossible_partitions_name_the_values(split, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        split(np.arange(10) % 2, np.random.default_rng(0))


@pytest.mark.parametrize(
    "split",
    [
        lambda rng: partition_iid(np.arange(200) % 7, 9, rng=rng),
        lambda rng: partition_dirichlet(np.arange(200) % 7, 9, alpha=0.3, rng=rng),
        lambda rng: partition_shards(np.arange(200) % 7, 9, shards_per_client=2, rng=rng),
    ],
)
def test_partitions_are_deterministic_in_the_generator_seed(split) -> None:  # type: ignore[no-untyped-def]
    first = split(np.random.default_rng(5))
    again = split(np.random.default_rng(5))
    other = split(np.random.default_rng(6))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_cached() -> None:
    cfg = _config()
    first = _fresh(cfg, 7)
    _assert_same(first, _fresh(cfg, 7))
    assert load_federation(cfg, 7) is load_federation(_config(), 7)


def test_tutorial_preset_shapes() -> None:
    federation = load_federation(load_config(preset="tutorial").data, 42)
    assert federation.num_clients == 15
    assert {c.num_examples for c in federation.clients} == {200}
    assert [c.client_id for c in federation.clients] == list(range(15))
    assert federation.holdout_x.shape == (300, 32) and federation.holdout_y.shape == (300,)
    assert (federation.input_dim, federation.num_classes) == (32, 10)
    assert federation.clients[0].x.dtype == torch.float32
    assert federation.clients[0].y.dtype == torch.int64


def test_synthetic_follows_the_tutorials_generator() -> None:
    """Labels uniform over the classes; N(0, 1) features plus 2.0 on feature `label % dim`."""
    federation = load_federation(_config(samples_per_client=2000, dim=8, num_classes=10), 0)
    x = torch.cat([c.x for c in federation.clients]).numpy()
    y = torch.cat([c.y for c in federation.clients]).numpy()
    counts = np.bincount(y, minlength=10)
    assert counts.min() > 0.8 * len(y) / 10
    noise = x.copy()
    noise[np.arange(len(y)), y % 8] -= 2.0
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1.0) < 0.01


def test_synthetic_holdout_is_an_independent_stream() -> None:
    small = load_federation(_config(holdout_samples=40), 0)
    large = load_federation(_config(holdout_samples=80), 0)
    # The training data does not depend on how big the holdout is.
    assert torch.equal(small.clients[0].x, large.clients[0].x)
    assert small.fingerprint != large.fingerprint
    pooled = torch.cat([c.x for c in small.clients])
    assert not (pooled[:, None, :] == small.holdout_x[None, :, :]).all(dim=2).any()


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 8},
        {"alpha": 0.1},
        {"partitioner": "iid"},
        {"partitioner": "shards"},
        {"num_clients": 5},
        {"holdout_samples": 41},
    ],
)
def test_fingerprint_changes_with_seed_and_partition_settings(change: dict[str, Any]) -> None:
    seed = change.pop("seed", 7)
    base = load_federation(_config(partitioner="dirichlet", alpha=0.5), 7)
    other = load_federation(_config(**{"partitioner": "dirichlet", "alpha": 0.5, **change}), seed)
    assert len(base.fingerprint) == 64
    assert base.fingerprint != other.fingerprint


def test_irrelevant_settings_do_not_change_the_fingerprint() -> None:
    iid = load_federation(_config(partitioner="iid", alpha=0.5), 3)
    assert iid.fingerprint == load_federation(_config(partitioner="iid", alpha=0.9), 3).fingerprint


def test_concurrent_loads_share_one_federation() -> None:
    clear_federation_cache()
    cfg = _config(num_clients=9)
    start = threading.Barrier(8)

    def load(_: int) -> Federation:
        start.wait()
        return load_federation(cfg, 11)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(load, range(8)))
    assert all(result is results[0] for result in results)


def test_unknown_client_id_is_a_config_error() -> None:
    federation = load_federation(_config(), 0)
    assert federation.client(5).client_id == 5
    with pytest.raises(ConfigError, match="client 6 does not exist; client ids run from 0 to 5"):
        federation.client(6)


def test_more_clients_than_samples_is_a_config_error() -> None:
    cfg = DataConfig(source="digits", num_clients=1500, partitioner="iid")
    with pytest.raises(ConfigError, match="1437 training samples into 1500 non-empty clients"):
        load_federation(cfg, 0)


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> Federation:
    return load_federation(load_config(preset="digits").data, 42)


def test_digits_shapes_and_standardisation(digits: Federation) -> None:
    x_train = torch.cat([c.x for c in digits.clients])
    assert x_train.dtype == torch.float32 and x_train.shape[1] == 64
    assert len(x_train) + len(digits.holdout_y) == 1797
    assert (digits.input_dim, digits.num_classes, digits.num_clients) == (64, 10, 10)
    mean, std = x_train.mean(dim=0), x_train.std(dim=0, unbiased=False)
    assert mean.abs().max() < 1e-4
    constant = std < 1e-6  # pixels blank in every training image stay at 0, not NaN
    assert torch.allclose(std[~constant], torch.ones(int((~constant).sum())), atol=1e-4)
    assert torch.isfinite(digits.holdout_x).all()


def test_digits_holdout_is_stratified(digits: Federation) -> None:
    from sklearn.datasets import load_digits

    all_counts = np.bincount(load_digits().target, minlength=10)
    holdout_counts = np.bincount(digits.holdout_y.numpy(), minlength=10)
    assert len(digits.holdout_y) == pytest.approx(0.2 * 1797, abs=1)
    assert np.all(np.abs(holdout_counts - 0.2 * all_counts) <= 1)


def test_digits_clients_are_label_skewed_and_non_empty(digits: Federation) -> None:
    sizes = [c.num_examples for c in digits.clients]
    assert min(sizes) >= 10 and sum(sizes) + len(digits.holdout_y) == 1797
    label_shares = [
        np.bincount(c.y.numpy(), minlength=10).max() / c.num_examples for c in digits.clients
    ]
    assert max(label_shares) > 0.3  # Dirichlet(0.5): some client is dominated by one label


def test_digits_is_deterministic_and_seed_dependent(digits: Federation) -> None:
    cfg = load_config(preset="digits").data
    _assert_same(digits, _fresh(cfg, 42))
    assert load_federation(cfg, 43).fingerprint != digits.fingerprint


# ----------------------------------------------------------------------------- npz


def _write_clients(directory: Path, sizes: list[int], *, holdout: int = 0, dim: int = 5) -> None:
    """Each row's first feature is its global row number, so splits can be checked."""
    directory.mkdir(parents=True, exist_ok=True)
    row = 0
    names = [f"client_{c}" for c in range(len(sizes))] + (["holdout"] if holdout else [])
    for name, size in zip(names, [*sizes, holdout], strict=False):
        x = np.zeros((size, dim), dtype=np.float64)
        x[:, 0] = np.arange(row, row + size)
        y = (np.arange(row, row + size) % 3).astype(np.int32)
        np.savez(directory / f"{name}.npz", x=x, y=y)
        row += size


def _npz(path: Path | str, num_clients: int, **fields: Any) -> DataConfig:
    return DataConfig(source="npz", path=str(path), num_clients=num_clients, **fields)


def test_npz_directory_round_trip(tmp_path: Path) -> None:
    _write_clients(tmp_path, [4, 6, 5], holdout=7)
    federation = _fresh(_npz(tmp_path, 3), 0)
    assert [c.num_examples for c in federation.clients] == [4, 6, 5]
    assert federation.clients[1].x[:, 0].tolist() == list(range(4, 10))
    assert federation.clients[1].x.dtype == torch.float32
    assert federation.clients[1].y.tolist() == [r % 3 for r in range(4, 10)]
    assert federation.holdout_x[:, 0].tolist() == list(range(15, 22))
    assert (federation.input_dim, federation.num_classes) == (5, 3)
    assert _fresh(_npz(tmp_path, 3), 0).fingerprint == federation.fingerprint


def test_npz_ignores_the_partitioner_and_reads_a_store_url(tmp_path: Path) -> None:
    _write_clients(tmp_path, [4, 6], holdout=3)
    plain = _fresh(_npz(tmp_path, 2, partitioner="iid"), 0)
    via_store = _fresh(_npz(tmp_path.as_uri(), 2, partitioner="shards"), 0)
    _assert_same(plain, via_store)


def test_npz_reads_an_s3_store_url(tmp_path: Path, moto_http_url: str) -> None:
    from fl.store import open_store

    _write_clients(tmp_path, [4, 6], holdout=3)
    store = open_store(moto_http_url)
    for name in ("client_0.npz", "client_1.npz", "holdout.npz"):
        store.put(name, (tmp_path / name).read_bytes())
    store.put("nested/client_2.npz", (tmp_path / "client_0.npz").read_bytes())  # not a client
    _assert_same(_fresh(_npz(tmp_path, 2), 0), _fresh(_npz(moto_http_url, 2), 0))


def test_npz_without_holdout_carves_a_stratified_share(tmp_path: Path) -> None:
    _write_clients(tmp_path, [30, 30, 30, 30])
    federation = _fresh(_npz(tmp_path, 4, holdout_fraction=0.25), 1)
    kept = torch.cat([c.x[:, 0] for c in federation.clients]).long().tolist()
    held = federation.holdout_x[:, 0].long().tolist()
    assert sorted(kept + held) == list(range(120))
    assert len(held) == 30
    assert np.bincount(federation.holdout_y.numpy()).tolist() == [10, 10, 10]


def _corrupt(directory: Path, name: str, **arrays: Any) -> None:
    np.savez(directory / name, **arrays)


def _save_npy(path: Path) -> None:
    with path.open("wb") as file:  # np.save(path) would append ".npy" to the name
        np.save(file, np.zeros(3))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: _corrupt(d, "client_1.npz", x=np.zeros((3, 5))), "client_1.npz lacks array 'y'"),
        (lambda d: (d / "client_1.npz").write_bytes(b"junk"), "client_1.npz is not a readable npz"),
        (
            lambda d: _corrupt(
                d, "client_1.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1)
            ),
            "client_1.npz is not a readable npz",
        ),
        (lambda d: _save_npy(d / "client_1.npz"), "client_1.npz is a single array"),
        (
            lambda d: _corrupt(d, "client_1.npz", x=np.zeros((3, 5)), y=np.zeros(2, dtype=int)),
            "client_1.npz: 'y' must hold 3 integer labels",
        ),
        (
            lambda d: _corrupt(d, "client_1.npz", x=np.zeros((3, 5)), y=np.zeros(3)),
            "client_1.npz: 'y' must hold 3 integer labels",
        ),
        (
            lambda d: _corrupt(
                d, "client_1.npz", x=np.full((3, 5), np.nan), y=np.zeros(3, dtype=int)
            ),
            "client_1.npz: 'x' holds NaN",
        ),
        (
            lambda d: _corrupt(d, "client_1.npz", x=np.zeros((3, 4)), y=np.zeros(3, dtype=int)),
            "client_1.npz has 4 features per example, client_0.npz has 5",
        ),
        (
            lambda d: _corrupt(d, "client_1.npz", x=np.zeros(3), y=np.zeros(3, dtype=int)),
            "client_1.npz: 'x' must be a non-empty numeric array",
        ),
        (lambda d: (d / "client_1.npz").rename(d / "client_3.npz"), "lacks client_1.npz"),
    ],
)
def test_bad_npz_files_are_config_errors_naming_the_file(
    tmp_path: Path, damage, message: str
) -> None:  # type: ignore[no-untyped-def]
    _write_clients(tmp_path, [4, 6, 5], holdout=3)
    damage(tmp_path)
    with pytest.raises(ConfigError, match=message):
        _fresh(_npz(tmp_path, 3), 0)


@pytest.mark.parametrize(
    ("path", "num_clients", "message"),
    [
        ("missing", 3, "is not a directory"),
        ("empty", 3, "holds no client_<id>.npz files"),
        ("data", 4, "holds 3 client files but data.num_clients is 4"),
    ],
)
def test_npz_directory_problems_are_config_errors(
    tmp_path: Path, path: str, num_clients: int, message: str
) -> None:
    (tmp_path / "empty").mkdir()
    _write_clients(tmp_path / "data", [4, 6, 5])
    with pytest.raises(ConfigError, match=message):
        _fresh(_npz(tmp_path / path, num_clients), 0)
