"""Model weights as named tensors, and the few operations every strategy needs on them.

`Weights` is what `nn.Module.state_dict()` returns: tensor names in the module's order. Weights
read back from bytes come sorted by name instead, so code that lines two sets of weights up
walks the names of one of them (the reference) rather than trusting both to share an order.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fl.errors import AggregationError

Weights = dict[str, torch.Tensor]


def _as_float32_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU float32 tensor (no copy), or a float32 copy of anything else."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype != torch.float32:
        tensor = tensor.to(torch.float32)
    return tensor.numpy()


def flatten(weights: Weights) -> np.ndarray:
    """All tensors as one float32 vector, concatenated in the dict's key order."""
    if not weights:
        return np.zeros(0, dtype=np.float32)
    out = np.empty(sum(t.numel() for t in weights.values()), dtype=np.float32)
    offset = 0
    for tensor in weights.values():
        size = tensor.numel()
        out[offset : offset + size] = _as_float32_numpy(tensor).reshape(-1)
        offset += size
    return out


def unflatten(vector: np.ndarray, like: Weights) -> Weights:
    """Cut a flat vector back into tensors with the names, shapes and dtypes of `like`."""
    vector = np.asarray(vector)
    expected = sum(t.numel() for t in like.values())
    if vector.ndim != 1 or vector.size != expected:
        raise ValueError(
            f"cannot unflatten a vector of shape {vector.shape} into weights of {expected} values"
        )
    result: Weights = {}
    offset = 0
    for name, ref in like.items():
        size = ref.numel()
        chunk = torch.from_numpy(np.array(vector[offset : offset + size], copy=True))
        result[name] = chunk.reshape(ref.shape).to(ref.dtype)
        offset += size
    return result


def check_compatible(update: Weights, reference: Weights, client_id: int | str) -> None:
    """Refuse an update whose tensor names, shapes or dtypes differ from the reference's."""
    for name, ref in reference.items():
        if name not in update:
            raise AggregationError(f"update from client {client_id} is missing tensor {name!r}")
        tensor = update[name]
        if not isinstance(tensor, torch.Tensor):
            raise AggregationError(
                f"update from client {client_id} has {type(tensor).__name__} for tensor {name!r}, "
                "expected a torch.Tensor"
            )
        if tensor.shape != ref.shape:
            raise AggregationError(
                f"update from client {client_id} has shape {tuple(tensor.shape)} for tensor "
                f"{name!r}, expected {tuple(ref.shape)}"
            )
        if tensor.dtype != ref.dtype:
            raise AggregationError(
                f"update from client {client_id} has dtype {tensor.dtype} for tensor {name!r}, "
                f"expected {ref.dtype}"
            )
    for name in update:
        if name not in reference:
            raise AggregationError(
                f"update from client {client_id} has tensor {name!r}, which the global model lacks"
            )


def l2_norm(weights: Weights) -> float:
    """Euclidean norm over every tensor taken as one vector (accumulated in float64)."""
    total = 0.0
    for tensor in weights.values():
        values = tensor.detach().to(torch.float64)
        total += float(torch.dot(values.reshape(-1), values.reshape(-1)))
    return math.sqrt(total)


def subtract(a: Weights, b: Weights) -> Weights:
    """`a - b` tensor by tensor, in `a`'s order; both must hold the same names and shapes."""
    if a.keys() != b.keys():
        missing = sorted(set(a) ^ set(b))
        raise AggregationError(f"cannot subtract weights with different tensors: {missing}")
    result: Weights = {}
    for name, tensor in a.items():
        other = b[name]
        if tensor.shape != other.shape:
            raise AggregationError(
                f"cannot subtract tensor {name!r}: shape {tuple(tensor.shape)} against "
                f"{tuple(other.shape)}"
            )
        result[name] = tensor.detach() - other.detach()
    return result
