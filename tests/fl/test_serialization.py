from __future__ import annotations

import hashlib
import io
import json
import pathlib
import pickle
import struct
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings

from fl.errors import IntegrityError
from fl.serialization import sha256_hex, weights_from_bytes, weights_to_bytes
from fl.weights import Weights
from tests.strategies import layouts, weights_like


def _model_weights() -> Weights:
    generator = torch.Generator().manual_seed(0)
    return {
        "net.0.weight": torch.randn(8, 4, generator=generator),
        "net.0.bias": torch.randn(8, generator=generator),
        "net.2.weight": torch.randn(3, 8, generator=generator),
        "net.2.bias": torch.randn(3, generator=generator),
    }


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]
)
def test_round_trip_is_exact(dtype: torch.dtype) -> None:
    weights = {name: (t * 100).to(dtype) for name, t in _model_weights().items()}
    loaded = weights_from_bytes(weights_to_bytes(weights), source="test")
    assert loaded.keys() == weights.keys()
    for name, tensor in weights.items():
        assert loaded[name].dtype == dtype
        assert torch.equal(loaded[name], tensor)


def test_tensors_come_back_sorted_by_name_every_time() -> None:
    weights = {f"net.{layer}.{kind}": torch.zeros(2) for layer in range(12) for kind in "wb"}
    data = weights_to_bytes(weights)
    for _ in range(5):  # the parser's own order is a hash map's, different from call to call
        assert list(weights_from_bytes(data, source="test")) == sorted(weights)


@settings(max_examples=40, deadline=None)
@given(layouts().flatmap(weights_like))
def test_round_trip_property(weights: Weights) -> None:
    loaded = weights_from_bytes(weights_to_bytes(weights), source="test")
    assert all(torch.equal(loaded[name], tensor) for name, tensor in weights.items())


def test_equal_weights_give_equal_bytes_and_checksum() -> None:
    first = _model_weights()
    second = {name: first[name].clone() for name in reversed(list(first))}  # other dict order
    data = weights_to_bytes(first)
    assert data == weights_to_bytes(second)
    assert sha256_hex(data) == sha256_hex(weights_to_bytes(second))
    assert sha256_hex(data) != sha256_hex(weights_to_bytes({**first, "net.2.bias": torch.zeros(3)}))


def test_no_metadata_is_written() -> None:
    data = weights_to_bytes(_model_weights())
    (length,) = struct.unpack("<Q", data[:8])
    assert "__metadata__" not in json.loads(data[8 : 8 + length])


def test_non_contiguous_shared_and_grad_tensors_are_written() -> None:
    base = torch.randn(4, 6, requires_grad=True)
    tied = torch.randn(3, 3)
    weights = {"t": base.t(), "a": tied, "b": tied, "row": tied[0]}
    loaded = weights_from_bytes(weights_to_bytes(weights), source="test")
    assert all(torch.equal(loaded[name], tensor.detach()) for name, tensor in weights.items())


def test_sha256_hex() -> None:
    assert sha256_hex(b"fedship") == hashlib.sha256(b"fedship").hexdigest()
    assert len(sha256_hex(b"")) == 64


class _Planted:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.marker,))


def _pickle_bytes(marker: pathlib.Path) -> bytes:
    return pickle.dumps({"net.0.weight": _Planted(marker)})


def _torch_save_bytes(marker: pathlib.Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"net.0.weight": torch.zeros(2), "payload": _Planted(marker)}, buffer)
    return buffer.getvalue()


def _legacy_torch_save_bytes(marker: pathlib.Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"payload": _Planted(marker)}, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


@pytest.mark.parametrize("make", [_pickle_bytes, _torch_save_bytes, _legacy_torch_save_bytes])
def test_pickle_and_torch_save_files_are_refused_and_not_executed(
    make: Callable[[pathlib.Path], bytes], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = tmp_path / "control"
    pickle.loads(_pickle_bytes(control))  # the payload is live: unpickling runs it
    assert control.exists()

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("weights_from_bytes must never unpickle")

    for target, attribute in [(pickle, "loads"), (pickle, "load"), (torch, "load")]:
        monkeypatch.setattr(target, attribute, forbidden)
    marker = tmp_path / "marker"
    with pytest.raises(IntegrityError, match="s3://bucket/update-7"):
        weights_from_bytes(make(marker), source="s3://bucket/update-7")
    assert not marker.exists()


def _header_only(header: dict[str, Any], tail: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + tail


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"1234567",
        b"\x00" * 64,
        b"not a model at all, just some text",
        weights_to_bytes(_model_weights())[:-5],  # truncated
        struct.pack("<Q", 10_000) + b"{}",  # header longer than the file
        _header_only({"__metadata__": {"a": "b"}}),  # no tensors
        _header_only({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\x00" * 8),
        _header_only([1, 2]),  # type: ignore[arg-type]
        struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc",
    ],
)
def test_malformed_bytes_raise_integrity_error_naming_the_source(data: bytes) -> None:
    with pytest.raises(IntegrityError, match="candidate of round 3"):
        weights_from_bytes(data, source="candidate of round 3")
