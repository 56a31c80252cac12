"""FedAvg: the mean of client weights, weighted by their example counts, computed as a stream.

Updates arrive one at a time (typically each read from the object store just before it is
added), so memory stays at one accumulator plus one scratch buffer however many clients took
part; no list of updates is ever held.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from fl.errors import AggregationError
from fl.training import ClientUpdate
from fl.weights import Weights, check_compatible


def _numpy_of(tensor: torch.Tensor) -> np.ndarray:
    """A numpy view of a CPU tensor, or a float32 copy when numpy lacks its dtype (bfloat16)."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.to(torch.float32)
    return tensor.numpy()


class WeightedMean:
    """Running sum of `num_examples * weights` over floating-point tensors, in float32.

    Tensors that are not floating point (counters such as BatchNorm's `num_batches_tracked`)
    are not averaged: the result carries the reference's values for them.
    """

    def __init__(self, reference: Weights) -> None:
        self.reference = reference
        self._slices: dict[str, slice] = {}
        offset = 0
        largest = 0
        for name, tensor in reference.items():
            if tensor.is_floating_point():
                self._slices[name] = slice(offset, offset + tensor.numel())
                offset += tensor.numel()
                largest = max(largest, tensor.numel())
        self._sum = np.zeros(offset, dtype=np.float32)
        self._scratch = np.empty(largest, dtype=np.float32)
        self.total_examples = 0
        self.count = 0

    def add(self, update: ClientUpdate) -> None:
        """Validate, then add one update; a refused update leaves the running sum untouched."""
        check_compatible(update.weights, self.reference, update.client_id)
        num_examples = update.num_examples
        if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
            raise AggregationError(
                f"update from client {update.client_id} has num_examples {num_examples!r}, "
                "expected a whole number"
            )
        if num_examples < 0:
            raise AggregationError(
                f"update from client {update.client_id} has num_examples {num_examples}, "
                "expected zero or more"
            )
        weight = np.float32(num_examples)
        for name, where in self._slices.items():
            values = _numpy_of(update.weights[name])
            scratch = self._scratch[: values.size].reshape(values.shape)
            np.multiply(values, weight, out=scratch, casting="same_kind")
            target = self._sum[where]
            np.add(target, scratch.reshape(-1), out=target)
        self.total_examples += int(num_examples)
        self.count += 1

    def result(self) -> Weights:
        """The weighted mean, with the reference's names, order, shapes and dtypes."""
        if self.count == 0:
            raise AggregationError("no client updates to aggregate")
        if self.total_examples == 0:
            raise AggregationError(
                f"cannot average {self.count} client updates that all report 0 examples"
            )
        total = np.float32(self.total_examples)
        mean: Weights = {}
        for name, tensor in self.reference.items():
            where = self._slices.get(name)
            if where is None:
                mean[name] = tensor.detach().clone()
                continue
            values = np.divide(self._sum[where], total)
            mean[name] = torch.from_numpy(values).reshape(tensor.shape).to(tensor.dtype)
        return mean


def aggregate_weighted_mean(updates: Iterable[ClientUpdate], reference: Weights) -> Weights:
    """FedAvg over `updates`, consumed one at a time; each is checked against `reference`."""
    mean = WeightedMean(reference)
    for update in updates:
        mean.add(update)
    return mean.result()
