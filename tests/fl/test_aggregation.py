from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl.aggregation import WeightedMean, aggregate_weighted_mean
from fl.errors import AggregationError
from fl.training import ClientUpdate
from fl.weights import Weights
from tests.strategies import cohorts, layouts, mismatched, weights_like


def _stack(updates: list[ClientUpdate], name: str) -> np.ndarray:
    return np.stack([u.weights[name].numpy() for u in updates])


def _random_cohort(num_clients: int, seed: int) -> list[ClientUpdate]:
    rng = np.random.default_rng(seed)
    layout = {"net.0.weight": (16, 8), "net.0.bias": (16,), "net.2.weight": (3, 16)}
    return [
        ClientUpdate(
            client_id=client,
            weights={
                n: torch.from_numpy(rng.normal(size=s).astype(np.float32))
                for n, s in layout.items()
            },
            num_examples=int(rng.integers(1, 500)),
            loss=0.0,
        )
        for client in range(num_clients)
    ]


@pytest.mark.parametrize(("num_clients", "seed"), [(1, 0), (2, 1), (7, 2), (30, 3)])
def test_equals_numpy_weighted_average(num_clients: int, seed: int) -> None:
    updates = _random_cohort(num_clients, seed)
    reference = {n: torch.zeros_like(t) for n, t in updates[0].weights.items()}
    result = aggregate_weighted_mean(iter(updates), reference)
    counts = [u.num_examples for u in updates]
    for name in reference:
        expected = np.average(_stack(updates, name), axis=0, weights=counts)
        np.testing.assert_allclose(result[name].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_result_keeps_reference_order_dtype_and_copies_non_float_tensors() -> None:
    reference = {
        "b.weight": torch.zeros(2, dtype=torch.float64),
        "a.count": torch.tensor(7),
        "a.weight": torch.zeros(3),
    }
    update = {
        "a.weight": torch.ones(3),
        "a.count": torch.tensor(99),
        "b.weight": torch.full((2,), 2.0, dtype=torch.float64),
    }
    result = aggregate_weighted_mean([ClientUpdate(0, update, 5, 0.0)], reference)
    assert list(result) == list(reference)
    assert result["b.weight"].dtype == torch.float64
    assert torch.equal(result["b.weight"], update["b.weight"])
    assert result["a.count"].item() == 7


@settings(max_examples=60, deadline=None)
@given(layouts().flatmap(weights_like), st.lists(st.integers(1, 10_000), min_size=1, max_size=8))
def test_identical_updates_aggregate_to_that_update(weights: Weights, counts: list[int]) -> None:
    updates = [ClientUpdate(i, weights, n, 0.0) for i, n in enumerate(counts)]
    result = aggregate_weighted_mean(updates, weights)
    for name, tensor in weights.items():
        np.testing.assert_allclose(result[name].numpy(), tensor.numpy(), rtol=1e-5, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(cohorts(min_clients=2), st.randoms(use_true_random=False))
def test_client_order_does_not_matter(updates: list[ClientUpdate], random) -> None:  # type: ignore[no-untyped-def]
    reference = updates[0].weights
    shuffled = list(updates)
    random.shuffle(shuffled)
    forward = aggregate_weighted_mean(updates, reference)
    permuted = aggregate_weighted_mean(shuffled, reference)
    for name in reference:
        np.testing.assert_allclose(
            forward[name].numpy(), permuted[name].numpy(), rtol=1e-5, atol=1e-3
        )


@settings(max_examples=60, deadline=None)
@given(cohorts())
def test_mean_is_a_convex_combination(updates: list[ClientUpdate]) -> None:
    """Normalised weights are non-negative and sum to one: the mean stays within min..max."""
    result = aggregate_weighted_mean(updates, updates[0].weights)
    for name in result:
        stacked = _stack(updates, name)
        slack = 1e-4 * (1 + np.abs(stacked).max())
        assert np.all(result[name].numpy() >= stacked.min(axis=0) - slack)
        assert np.all(result[name].numpy() <= stacked.max(axis=0) + slack)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_mismatched_update_is_refused_naming_client_and_tensor(data: st.DataObject) -> None:
    reference = data.draw(layouts().flatmap(weights_like))
    broken, tensor_name = data.draw(mismatched(reference))
    mean = WeightedMean(reference)
    mean.add(ClientUpdate(3, reference, 10, 0.0))
    with pytest.raises(AggregationError) as info:
        mean.add(ClientUpdate(17, broken, 10, 0.0))
    assert "client 17" in str(info.value)
    assert repr(tensor_name) in str(info.value)
    # The refused update left the running sum as it was.
    assert mean.count == 1 and mean.total_examples == 10
    for name, tensor in mean.result().items():
        np.testing.assert_allclose(tensor.numpy(), reference[name].numpy(), rtol=1e-6)


def test_streams_and_validates_each_update_before_the_next_is_read() -> None:
    reference = {"w": torch.zeros(4)}
    consumed: list[int] = []

    def updates() -> Iterator[ClientUpdate]:
        for client in range(3):
            consumed.append(client)
            weights = {"w": torch.zeros(5)} if client == 1 else {"w": torch.ones(4)}
            yield ClientUpdate(client, weights, 1, 0.0)

    with pytest.raises(AggregationError, match="client 1"):
        aggregate_weighted_mean(updates(), reference)
    assert consumed == [0, 1]


@pytest.mark.parametrize(
    ("updates", "message"),
    [([], "no client updates"), ([ClientUpdate(0, {"w": torch.ones(2)}, 0, 0.0)], "0 examples")],
)
def test_empty_input_or_zero_weight_is_an_error(updates: list[ClientUpdate], message: str) -> None:
    with pytest.raises(AggregationError, match=message):
        aggregate_weighted_mean(updates, {"w": torch.zeros(2)})


@pytest.mark.parametrize("num_examples", [-1, 2.5, True, "10"])
def test_bad_example_count_is_refused(num_examples: object) -> None:
    mean = WeightedMean({"w": torch.zeros(2)})
    with pytest.raises(AggregationError, match="client 4 has num_examples"):
        mean.add(ClientUpdate(4, {"w": torch.ones(2)}, num_examples, 0.0))  # type: ignore[arg-type]


def test_counts_and_total_examples() -> None:
    mean = WeightedMean({"w": torch.zeros(2)})
    for client, count in enumerate([3, 0, 5]):
        mean.add(ClientUpdate(client, {"w": torch.full((2,), float(client))}, count, 0.0))
    assert (mean.count, mean.total_examples) == (3, 8)
    np.testing.assert_allclose(mean.result()["w"].numpy(), np.average([0, 1, 2], weights=[3, 0, 5]))


_LAYOUT = {"body.weight": (512, 384), "body.bias": (512,), "head.weight": (10, 512)}
_MODEL_BYTES = 4 * sum(int(np.prod(shape)) for shape in _LAYOUT.values())


def _lazy_updates(num_clients: int) -> Iterator[ClientUpdate]:
    """Numpy-backed updates (so tracemalloc sees them), created only when asked for."""
    rng = np.random.default_rng(num_clients)
    for client in range(num_clients):
        weights = {
            name: torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
            for name, shape in _LAYOUT.items()
        }
        yield ClientUpdate(client, weights, 10 + client, 0.0)


def _peak_bytes(num_clients: int) -> int:
    reference = {name: torch.zeros(shape) for name, shape in _LAYOUT.items()}
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = aggregate_weighted_mean(_lazy_updates(num_clients), reference)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert set(result) == set(_LAYOUT)
    return peak


def test_extra_memory_does_not_grow_with_the_number_of_clients() -> None:
    _peak_bytes(2)  # warm up: one-time allocations must not count for either side
    few, many = _peak_bytes(4), _peak_bytes(64)
    assert few > _MODEL_BYTES  # tracemalloc did see the numpy buffers
    assert many < 1.5 * few
    assert many < 8 * _MODEL_BYTES  # holding every update would take 64x
