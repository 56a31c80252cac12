from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from fl.errors import AggregationError
from fl.weights import Weights, check_compatible, flatten, l2_norm, subtract, unflatten
from tests.strategies import layouts, weights_like


def _weights() -> Weights:
    generator = torch.Generator().manual_seed(1)
    return {
        "net.2.weight": torch.randn(3, 5, generator=generator),
        "net.0.weight": torch.randn(5, 4, generator=generator),
        "net.0.bias": torch.randn(5, generator=generator, dtype=torch.float64),
        "steps": torch.tensor(12),
    }


def test_flatten_concatenates_in_key_order_as_float32() -> None:
    weights = _weights()
    flat = flatten(weights)
    expected = np.concatenate([t.numpy().astype(np.float32).ravel() for t in weights.values()])
    assert flat.dtype == np.float32
    np.testing.assert_array_equal(flat, expected)


def test_unflatten_restores_names_shapes_and_dtypes() -> None:
    like = _weights()
    restored = unflatten(flatten(like), like)
    assert list(restored) == list(like)
    for name, tensor in like.items():
        assert restored[name].dtype == tensor.dtype
        assert restored[name].shape == tensor.shape
        np.testing.assert_allclose(restored[name].numpy(), tensor.numpy(), rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(layouts().flatmap(weights_like))
def test_flatten_unflatten_round_trip(weights: Weights) -> None:
    restored = unflatten(flatten(weights), weights)
    assert all(torch.equal(restored[name], tensor) for name, tensor in weights.items())


def test_unflatten_refuses_a_vector_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="41 values"):
        unflatten(np.zeros(3, dtype=np.float32), _weights())


def test_unflatten_result_owns_its_memory() -> None:
    vector = np.zeros(41, dtype=np.float32)
    restored = unflatten(vector, _weights())
    vector[:] = 1.0
    assert float(restored["net.2.weight"].abs().sum()) == 0.0


def test_compatible_weights_pass() -> None:
    weights = _weights()
    reordered = {name: weights[name].clone() for name in reversed(list(weights))}
    check_compatible(reordered, weights, client_id=3)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda w: w.pop("net.0.bias"), "missing tensor 'net.0.bias'"),
        (lambda w: w.update({"net.9.weight": torch.zeros(1)}), "tensor 'net.9.weight', which"),
        (lambda w: w.update({"net.0.weight": torch.zeros(4, 5)}), "shape (4, 5) for tensor"),
        (lambda w: w.update({"net.2.weight": torch.zeros(3, 5).half()}), "dtype torch.float16"),
        (lambda w: w.update({"steps": np.zeros(1)}), "ndarray for tensor 'steps'"),
    ],
)
def test_incompatible_update_names_client_and_tensor(change, fragment: str) -> None:  # type: ignore[no-untyped-def]
    update = _weights()
    change(update)
    with pytest.raises(AggregationError) as info:
        check_compatible(update, _weights(), client_id=12)
    message = str(info.value)
    assert message.startswith("update from client 12 ")
    assert fragment in message


def test_l2_norm_matches_numpy() -> None:
    weights = _weights()
    expected = np.linalg.norm(
        np.concatenate([t.numpy().astype(np.float64).ravel() for t in weights.values()])
    )
    assert l2_norm(weights) == pytest.approx(expected, rel=1e-12)
    assert l2_norm({}) == 0.0


def test_subtract_is_elementwise_in_the_first_arguments_order() -> None:
    a = _weights()
    b = {name: torch.ones_like(a[name]) for name in reversed(list(a))}
    difference = subtract(a, b)
    assert list(difference) == list(a)
    for name in a:
        np.testing.assert_array_equal(difference[name].numpy(), a[name].numpy() - 1)


@pytest.mark.parametrize(
    "other",
    [{"x": torch.zeros(2)}, {"x": torch.zeros(2), "y": torch.zeros(3)}],
)
def test_subtract_refuses_mismatched_weights(other: Weights) -> None:
    with pytest.raises(AggregationError, match="cannot subtract"):
        subtract({"x": torch.zeros(2), "y": torch.zeros(2)}, other)
