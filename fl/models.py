"""Model architectures by name (`mlp`, `cnn`) or by factory (`package.module:callable`)."""

from __future__ import annotations

import importlib
import inspect
import math
import threading
from typing import Any

import torch
from torch import nn

from fl.config import ModelConfig
from fl.errors import ConfigError
from fl.weights import Weights


class MLP(nn.Module):
    """The tutorial's model: Linear -> ReLU -> Linear (state-dict names `net.0.weight`, ...)."""

    def __init__(self, input_dim: int, hidden_dim: int, num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and a 2x2 pool for small square single-channel images.

    Takes the image flat (`side * side` features, as the data sources give it) and reshapes it.
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_classes: int) -> None:
        super().__init__()
        side = math.isqrt(input_dim)
        if side * side != input_dim or side < 2:
            raise ConfigError(
                f"model.arch 'cnn' needs square single-channel images, but input_dim {input_dim} "
                "is not a perfect square of at least 4"
            )
        self.side = side
        pooled = side // 2
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * pooled * pooled, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.reshape(-1, 1, self.side, self.side)))


_BUILTIN: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": SmallCNN}
_FACTORY_ARGS = ("input_dim", "num_classes", "hidden_dim")


def _load_factory(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"model factory {spec!r}: cannot import {module_name!r} ({err})"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"model factory {spec!r}: {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"model factory {spec!r} is not callable")
    return target


def _factory_kwargs(factory: Any, available: dict[str, int]) -> dict[str, int]:
    """The subset of `available` the factory accepts (all of it if it takes **kwargs)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: pass everything
        return dict(available)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(available)
    names = {p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    return {name: value for name, value in available.items() if name in names}


def build_model(cfg: ModelConfig, input_dim: int, num_classes: int) -> nn.Module:
    """A fresh model for `input_dim` features and `num_classes` classes (default PyTorch init)."""
    if cfg.arch in _BUILTIN:
        return _BUILTIN[cfg.arch](input_dim, cfg.hidden_dim, num_classes)
    factory = _load_factory(cfg.arch)
    available = {"input_dim": input_dim, "num_classes": num_classes, "hidden_dim": cfg.hidden_dim}
    model = factory(**_factory_kwargs(factory, available))
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model factory {cfg.arch!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _init_from_generator(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Linear/Conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from `generator`."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-bound, bound, generator=generator)


# Building a module draws from the global generator; that generator is forked, seeded and
# restored around the build, one caller at a time.
_global_rng_lock = threading.Lock()


def initial_weights(cfg: ModelConfig, input_dim: int, num_classes: int, seed: int) -> Weights:
    """Round-zero weights, identical for the same seed; the global torch RNG is left as it was.

    Built-in architectures are then re-initialised from a private generator, so their weights
    stay deterministic even if another thread draws from the global generator meanwhile.
    """
    with _global_rng_lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg, input_dim, num_classes)
    if cfg.arch in _BUILTIN:
        _init_from_generator(model, torch.Generator().manual_seed(seed))
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
