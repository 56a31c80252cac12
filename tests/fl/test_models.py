from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from fl.config import ModelConfig
from fl.errors import ConfigError
from fl.models import build_model, initial_weights

FACTORIES = """
from torch import nn

def tiny(input_dim, num_classes):
    return nn.Sequential(nn.Linear(input_dim, 3), nn.Tanh(), nn.Linear(3, num_classes))

def wide(**kwargs):
    return nn.Linear(kwargs["input_dim"], kwargs["num_classes"] * kwargs["hidden_dim"])

def not_a_model(input_dim):
    return "a string"

class Zoo:
    @staticmethod
    def make(input_dim, num_classes, hidden_dim):
        return nn.Linear(input_dim, hidden_dim)

NOT_CALLABLE = 3
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "fedship_test_factories.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fedship_test_factories"
    sys.modules.pop("fedship_test_factories", None)


def test_mlp_is_the_tutorials_model() -> None:
    model = build_model(ModelConfig(arch="mlp", hidden_dim=64), input_dim=32, num_classes=10)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert shapes == {
        "net.0.weight": (64, 32),
        "net.0.bias": (64,),
        "net.2.weight": (10, 64),
        "net.2.bias": (10,),
    }
    assert isinstance(model.get_submodule("net.1"), nn.ReLU)
    assert model(torch.randn(5, 32)).shape == (5, 10)


def test_cnn_takes_flat_square_images() -> None:
    model = build_model(ModelConfig(arch="cnn", hidden_dim=32), input_dim=64, num_classes=10)
    assert model(torch.randn(7, 64)).shape == (7, 10)
    assert any(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize("input_dim", [63, 65, 1])
def test_cnn_needs_a_perfect_square(input_dim: int) -> None:
    with pytest.raises(ConfigError, match=f"input_dim {input_dim} is not a perfect square"):
        build_model(ModelConfig(arch="cnn"), input_dim=input_dim, num_classes=10)


@pytest.mark.parametrize(
    ("attribute", "expected_shapes"),
    [
        ("tiny", {"0.weight": (3, 8), "0.bias": (3,), "2.weight": (4, 3), "2.bias": (4,)}),
        ("wide", {"weight": (20, 8), "bias": (20,)}),
        ("Zoo.make", {"weight": (5, 8), "bias": (5,)}),
    ],
)
def test_factory_gets_only_the_keyword_arguments_it_accepts(
    factories: str, attribute: str, expected_shapes: dict[str, tuple[int, ...]]
) -> None:
    model = build_model(ModelConfig(arch=f"{factories}:{attribute}", hidden_dim=5), 8, 4)
    assert {name: tuple(t.shape) for name, t in model.state_dict().items()} == expected_shapes


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("fedship_no_such_module:make", "cannot import 'fedship_no_such_module'"),
        ("{module}:missing", "has no 'missing'"),
        ("{module}:NOT_CALLABLE", "is not callable"),
        ("{module}:not_a_model", "returned str, not a torch.nn.Module"),
    ],
)
def test_bad_factories_are_config_errors_naming_the_factory(
    factories: str, arch: str, message: str
) -> None:
    arch = arch.format(module=factories)
    with pytest.raises(ConfigError, match=message) as info:
        build_model(ModelConfig(arch=arch), 8, 4)
    assert repr(arch) in str(info.value)


ARCHS = ["mlp", "cnn", "fedship_test_factories:tiny"]


@pytest.mark.parametrize("arch", ARCHS)
def test_initial_weights_are_deterministic_and_leave_the_global_rng_alone(
    factories: str, arch: str
) -> None:
    cfg = ModelConfig(arch=arch, hidden_dim=16)
    torch.manual_seed(123)
    expected_draw = torch.rand(4)
    torch.manual_seed(123)
    first = initial_weights(cfg, 64, 10, seed=5)
    assert torch.equal(torch.rand(4), expected_draw)
    again = initial_weights(cfg, 64, 10, seed=5)
    other = initial_weights(cfg, 64, 10, seed=6)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
    build_model(cfg, 64, 10).load_state_dict(first, strict=True)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_builtin_initialisation_follows_pytorch_defaults(arch: str) -> None:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, filling most of that range."""
    model = build_model(ModelConfig(arch=arch, hidden_dim=64), 64, 10)
    weights = initial_weights(ModelConfig(arch=arch, hidden_dim=64), 64, 10, seed=0)
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            bound = 1 / math.sqrt(module.weight[0].numel())
            for kind in ("weight", "bias"):
                tensor = weights[f"{module_name}.{kind}"]
                assert tensor.abs().max() <= bound
                assert tensor.abs().max() > 0.8 * bound
