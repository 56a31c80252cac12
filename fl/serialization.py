"""Weights to bytes and back, as safetensors only.

Safetensors is a JSON header plus raw tensor bytes: reading it never runs code, unlike pickle or
`torch.load`, which neither appears here. Bytes are deterministic (no metadata, tensors laid out
by dtype and name), so equal weights give equal checksums.
"""

from __future__ import annotations

import hashlib
import json
import struct

import torch
from safetensors.torch import load as _safetensors_load
from safetensors.torch import save as _safetensors_save

from fl.errors import IntegrityError
from fl.weights import Weights

# The header is a little-endian u64 length followed by that many bytes of JSON; a real model's
# header is kilobytes. Anything claiming more is not safetensors (pickle and zip magic decode to
# absurd lengths), and is refused before the parser sees it.
_HEADER_LENGTH_BYTES = 8
_MAX_HEADER_BYTES = 100_000_000


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of `data` as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def weights_to_bytes(weights: Weights) -> bytes:
    """Safetensors bytes of detached, contiguous CPU copies of the tensors, without metadata."""
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, tensor in weights.items():
        tensor = tensor.detach().to("cpu").contiguous()
        # Safetensors refuses tensors that share memory (tied weights); give each its own copy.
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen_storage and tensor.numel() > 0:
            tensor = tensor.clone()
        seen_storage.add(pointer)
        tensors[name] = tensor
    return _safetensors_save(tensors, metadata=None)


def _check_header(data: bytes, source: str) -> None:
    if len(data) < _HEADER_LENGTH_BYTES:
        raise IntegrityError(f"{source} is not a safetensors model: only {len(data)} bytes")
    (header_length,) = struct.unpack("<Q", data[:_HEADER_LENGTH_BYTES])
    end = _HEADER_LENGTH_BYTES + header_length
    if header_length == 0 or header_length > _MAX_HEADER_BYTES or end > len(data):
        raise IntegrityError(
            f"{source} is not a safetensors model (pickle, torch.save and other formats are "
            "refused)"
        )
    try:
        header = json.loads(data[_HEADER_LENGTH_BYTES:end])
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{source} is not a safetensors model: bad header") from None
    if not isinstance(header, dict):
        raise IntegrityError(f"{source} is not a safetensors model: its header is not an object")
    if not any(key != "__metadata__" for key in header):
        raise IntegrityError(f"{source} holds no tensors, so it is not a model")


def weights_from_bytes(data: bytes, *, source: str) -> Weights:
    """Parse safetensors bytes; anything else raises `IntegrityError` naming `source`.

    Tensors come back sorted by name: the file does not record the module's order, and the
    parser's own order is random (a hash map). Two sets of weights read back from bytes therefore
    line up position by position; to line up with a `state_dict()`, walk that dict's names.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise IntegrityError(f"{source} is {type(data).__name__}, not safetensors bytes")
    data = bytes(data)
    _check_header(data, source)
    try:
        loaded = _safetensors_load(data)
    except Exception as err:  # the Rust parser raises its own error type for every bad input
        raise IntegrityError(f"{source} is not a valid safetensors model: {err}") from None
    return {name: loaded[name] for name in sorted(loaded)}
