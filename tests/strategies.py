"""Hypothesis generators for weights and client updates, shared by the `fl` tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fl.training import ClientUpdate
from fl.weights import Weights

Layout = dict[str, tuple[int, ...]]

tensor_names = st.from_regex(r"(net|head|body)\.[0-9]\.(weight|bias)", fullmatch=True)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)
values = st.floats(-100.0, 100.0, width=32, allow_nan=False, allow_infinity=False)
example_counts = st.integers(min_value=1, max_value=10_000)


def layouts(max_tensors: int = 4) -> st.SearchStrategy[Layout]:
    """Tensor names and shapes of a model."""
    return st.dictionaries(tensor_names, shapes, min_size=1, max_size=max_tensors)


@st.composite
def weights_like(draw: Any, layout: Layout) -> Weights:
    """Float32 weights with the given layout."""
    return {
        name: torch.from_numpy(draw(hnp.arrays(np.float32, shape, elements=values)))
        for name, shape in layout.items()
    }


@st.composite
def cohorts(draw: Any, min_clients: int = 1, max_clients: int = 6) -> list[ClientUpdate]:
    """Updates of several clients for one model layout, with varied example counts."""
    layout = draw(layouts())
    count = draw(st.integers(min_clients, max_clients))
    return [
        ClientUpdate(
            client_id=client,
            weights=draw(weights_like(layout)),
            num_examples=draw(example_counts),
            loss=0.0,
        )
        for client in range(count)
    ]


MISMATCHES = ("missing", "extra", "shape", "dtype")


@st.composite
def mismatched(draw: Any, reference: Weights) -> tuple[Weights, str]:
    """A copy of `reference` broken in one way, and the name of the tensor at fault."""
    kind = draw(st.sampled_from(MISMATCHES))
    broken = {name: tensor.clone() for name, tensor in reference.items()}
    name = draw(st.sampled_from(sorted(reference)))
    if kind == "missing":
        del broken[name]
    elif kind == "extra":
        name = draw(tensor_names.filter(lambda n: n not in reference))
        broken[name] = torch.zeros(1)
    elif kind == "shape":
        broken[name] = torch.zeros(*reference[name].shape, 2)
    else:
        broken[name] = reference[name].to(torch.float64)
    return broken, name
