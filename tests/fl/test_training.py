from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.utils.data

import fl.training
from fl.config import DataConfig, ModelConfig, TrainConfig
from fl.data import ClientData, Federation, load_federation
from fl.errors import ConfigError
from fl.models import build_model, initial_weights
from fl.sampling import derive_seed, sample_clients
from fl.training import Evaluation, client_seed, evaluate, train_cohort
from fl.weights import Weights, l2_norm, subtract

TRAIN = TrainConfig(lr=0.05, local_epochs=2, batch_size=16)


@pytest.fixture(scope="module")
def federation() -> Federation:
    cfg = DataConfig(
        source="synthetic", partitioner="iid", num_clients=4, samples_per_client=60, dim=12,
        num_classes=5,
    )  # fmt: skip
    return load_federation(cfg, 3)


def _setup(federation: Federation, arch: str = "mlp") -> tuple[torch.nn.Module, Weights]:
    cfg = ModelConfig(arch=arch, hidden_dim=16)
    model = build_model(cfg, federation.input_dim, federation.num_classes)
    return model, initial_weights(cfg, federation.input_dim, federation.num_classes, seed=0)


def _train(
    federation: Federation, cfg: TrainConfig = TRAIN, **kwargs: object
) -> list[fl.training.ClientUpdate]:
    model, weights = _setup(federation)
    options = {"seed": 1, "server_round": 1, **kwargs}
    return train_cohort(model, weights, federation.clients, cfg, **options)  # type: ignore[arg-type]


def _same(a: Weights, b: Weights) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "cfg",
    [TRAIN, TrainConfig(optimizer="adam", lr=0.01), TrainConfig(momentum=0.9, weight_decay=1e-3)],
)
def test_training_is_bitwise_deterministic(federation: Federation, cfg: TrainConfig) -> None:
    first, second = _train(federation, cfg), _train(federation, cfg)
    for a, b in zip(first, second, strict=True):
        assert _same(a.weights, b.weights)
        assert a.loss == b.loss


def test_batch_order_depends_on_seed_round_and_client(federation: Federation) -> None:
    base = _train(federation)
    other_round = _train(federation, server_round=2)
    other_seed = _train(federation, seed=2)
    assert not _same(base[0].weights, other_round[0].weights)
    assert not _same(base[0].weights, other_seed[0].weights)
    # The same client trains identically whoever else is in the cohort.
    model, weights = _setup(federation)
    alone = train_cohort(model, weights, [federation.client(2)], TRAIN, seed=1, server_round=1)
    assert _same(alone[0].weights, base[2].weights)


def test_one_update_per_client_as_detached_cpu_copies(federation: Federation) -> None:
    model, weights = _setup(federation)
    updates = train_cohort(model, weights, federation.clients, TRAIN, seed=1, server_round=1)
    assert [u.client_id for u in updates] == [0, 1, 2, 3]
    assert [u.num_examples for u in updates] == [60] * 4
    parameter_pointers = {p.data_ptr() for p in model.parameters()}
    for update in updates:
        assert list(update.weights) == list(model.state_dict())
        assert all(t.device.type == "cpu" and not t.requires_grad for t in update.weights.values())
        assert not {t.data_ptr() for t in update.weights.values()} & parameter_pointers
        assert np.isfinite(update.loss) and update.loss > 0


@pytest.mark.parametrize("pass_model_state", [False, True])
def test_global_weights_are_not_modified(federation: Federation, pass_model_state: bool) -> None:
    model, weights = _setup(federation)
    if pass_model_state:  # the caller hands in the scratch model's own tensors
        model.load_state_dict(weights)
        weights = model.state_dict()
    before = {name: tensor.clone() for name, tensor in weights.items()}
    updates = train_cohort(model, weights, federation.clients, TRAIN, seed=1, server_round=1)
    assert _same(weights, before)
    assert not _same(updates[0].weights, before)
    evaluate(model, weights, federation.holdout_x, federation.holdout_y, 5)
    assert _same(weights, before)


def test_no_dataloader(federation: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("train_cohort must slice tensors, not build a DataLoader")

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", refuse)
    assert _train(federation)
    assert not any(value is torch.utils.data.DataLoader for value in vars(fl.training).values())


def test_proximal_term_pulls_weights_toward_the_global_model(federation: Federation) -> None:
    model, weights = _setup(federation)
    cfg = TrainConfig(lr=0.1, local_epochs=3, batch_size=16)

    def drift(mu: float) -> float:
        update = train_cohort(
            model, weights, [federation.client(0)], cfg, seed=1, server_round=1, proximal_mu=mu
        )[0]
        return l2_norm(subtract(update.weights, weights))

    drifts = [drift(mu) for mu in (0.0, 0.1, 1.0, 10.0)]
    assert drifts == sorted(drifts, reverse=True)
    assert drifts[-1] < 0.5 * drifts[0]
    with pytest.raises(ConfigError, match="proximal_mu"):
        drift(-1.0)


def test_loss_is_the_mean_batch_loss(federation: Federation) -> None:
    """One full batch per epoch and a negligible step: the loss is the initial cross-entropy."""
    model, weights = _setup(federation)
    client = federation.client(1)
    cfg = TrainConfig(lr=1e-9, local_epochs=3, batch_size=1000)
    update = train_cohort(model, weights, [client], cfg, seed=1, server_round=1)[0]
    model.load_state_dict(weights)
    with torch.no_grad():
        expected = float(F.cross_entropy(model(client.x), client.y))
    assert update.loss == pytest.approx(expected, rel=1e-5)


def test_thread_count_is_set_for_the_call_and_restored(
    federation: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    original = fl.training._train_client

    def spy(*args: object, **kwargs: object) -> float:
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fl.training, "_train_client", spy)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _train(federation, num_threads=1)
        assert torch.get_num_threads() == 2
        _train(federation, num_threads=None)
        assert seen == [1] * 4 + [2] * 4
        model, weights = _setup(federation)
        evaluate(model, weights, federation.holdout_x, federation.holdout_y, 5, num_threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_client_without_examples_is_refused(federation: Federation) -> None:
    model, weights = _setup(federation)
    empty = ClientData(9, torch.zeros(0, 12), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ConfigError, match="client 9 has no training examples"):
        train_cohort(model, weights, [empty], TRAIN, seed=1, server_round=1)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_matches_an_independent_computation(federation: Federation) -> None:
    model, weights = _setup(federation)
    weights = _train(federation)[0].weights
    x, y = federation.holdout_x, federation.holdout_y
    result = evaluate(model, weights, x, y, num_classes=7)
    model.load_state_dict(weights)
    with torch.no_grad():
        logits = model(x).numpy().astype(np.float64)
    labels = y.numpy()
    predicted = logits.argmax(axis=1)
    log_softmax = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    assert result.accuracy == pytest.approx(np.mean(predicted == labels))
    assert result.loss == pytest.approx(
        -log_softmax[np.arange(len(labels)), labels].mean(), rel=1e-5
    )
    assert result.num_examples == len(labels)
    for label in range(7):
        mask = labels == label
        expected = np.mean(predicted[mask] == label) if mask.any() else None
        assert result.per_class_accuracy[label] == (pytest.approx(expected) if mask.any() else None)
    assert result.per_class_accuracy[5:] == [None, None]  # the data has 5 classes


def test_evaluation_to_dict() -> None:
    result = Evaluation(accuracy=0.5, loss=1.25, per_class_accuracy=[1.0, None], num_examples=4)
    assert result.to_dict() == {
        "accuracy": 0.5,
        "loss": 1.25,
        "per_class_accuracy": [1.0, None],
        "num_examples": 4,
    }


def test_evaluate_refuses_an_empty_set(federation: Federation) -> None:
    model, weights = _setup(federation)
    with pytest.raises(ConfigError, match="empty"):
        evaluate(model, weights, torch.zeros(0, 12), torch.zeros(0, dtype=torch.int64), 5)


# ----------------------------------------------------------------------------- seeds, sampling


def test_seeds_are_stable_across_processes() -> None:
    """Not Python's salted `hash`: the same value under any PYTHONHASHSEED, and pinned."""
    assert client_seed(42, 3, 7) == 8926204267654995151
    code = "from fl.sampling import derive_seed; print(derive_seed('client', 42, 3, 7))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        ).stdout.strip()
        for hash_seed in ("1", "2")
    }
    assert outputs == {str(client_seed(42, 3, 7))}
    assert 0 <= client_seed(42, 3, 7) < 2**63
    assert len({client_seed(42, r, c) for r in range(5) for c in range(5)}) == 25


def test_derive_seed_separates_labels() -> None:
    assert derive_seed("a", 1) != derive_seed("b", 1)
    assert derive_seed("a", 1, 2) != derive_seed("a", 12)


def test_sample_clients_is_sorted_distinct_and_deterministic() -> None:
    chosen = sample_clients(15, 8, seed=42, server_round=3)
    assert chosen == sorted(set(chosen)) and len(chosen) == 8
    assert all(0 <= c < 15 for c in chosen)
    assert chosen == sample_clients(15, 8, seed=42, server_round=3)
    rounds = {tuple(sample_clients(15, 8, seed=42, server_round=r)) for r in range(1, 11)}
    assert len(rounds) > 5
    assert sample_clients(15, 8, seed=43, server_round=3) != chosen
    assert sample_clients(5, 5, seed=0, server_round=1) == [0, 1, 2, 3, 4]


def test_sample_clients_covers_every_client_evenly() -> None:
    counts = np.zeros(10)
    for server_round in range(2000):
        counts[sample_clients(10, 3, seed=0, server_round=server_round)] += 1
    assert np.all(np.abs(counts / 2000 - 0.3) < 0.04)


@pytest.mark.parametrize(("num_clients", "k"), [(5, 6), (5, -1)])
def test_sample_clients_refuses_impossible_requests(num_clients: int, k: int) -> None:
    with pytest.raises(ConfigError, match=f"cannot sample {k} clients out of {num_clients}"):
        sample_clients(num_clients, k, seed=0, server_round=1)
