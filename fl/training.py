"""Local training of a cohort of clients, and evaluation on held-out data.

Minibatches are slices of in-memory tensors in an order drawn from a per-client generator (no
DataLoader: no worker processes, no global RNG), so the same inputs give bitwise-identical
weights, and one client takes milliseconds.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fl.config import TrainConfig
from fl.data import ClientData
from fl.errors import ConfigError
from fl.sampling import derive_seed
from fl.weights import Weights

_EVAL_BATCH = 4096


@dataclass(eq=False)
class ClientUpdate:
    """A client's weights after local training, its example count and mean batch loss."""

    client_id: int
    weights: Weights
    num_examples: int
    loss: float


@dataclass
class Evaluation:
    """Accuracy and mean loss on a labelled set; per-class accuracy is None for absent classes."""

    accuracy: float
    loss: float
    per_class_accuracy: list[float | None]
    num_examples: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "per_class_accuracy": list(self.per_class_accuracy),
            "num_examples": self.num_examples,
        }


def client_seed(seed: int, server_round: int, client_id: int) -> int:
    """The seed of one client's batch order in one round (stable across processes)."""
    return derive_seed("client", seed, server_round, client_id)


_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


@contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count while any caller is inside (it is process-wide).

    Reference-counted, so concurrent client tasks in threads neither restore the count under
    each other nor leave it changed: the first to enter saves it, the last to leave restores it.
    """
    global _threads_users, _threads_saved
    if num_threads is None:
        yield
        return
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
        _threads_users += 1
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


def _optimizer(params: Sequence[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _train_client(
    model: nn.Module,
    global_weights: Weights,
    client: ClientData,
    cfg: TrainConfig,
    generator: torch.Generator,
    proximal_mu: float,
) -> float:
    """Train `model` (already holding the global weights) in place; return the mean batch loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [global_weights[name] for name, p in model.named_parameters() if p.requires_grad]
    optimizer = _optimizer(params, cfg)
    x, y, n = client.x, client.y, client.num_examples
    total_loss = torch.zeros((), dtype=torch.float64)
    num_batches = 0
    model.train()
    for _ in range(cfg.local_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[batch]), y[batch])
            objective = loss
            if proximal_mu > 0:  # FedProx: mu/2 * ||w - w_global||^2
                drift = sum((p - a).pow(2).sum() for p, a in zip(params, anchors, strict=True))
                objective = loss + 0.5 * proximal_mu * drift
            objective.backward()
            optimizer.step()
            total_loss += loss.detach()
            num_batches += 1
    return float(total_loss) / num_batches


def _shares_memory(model: nn.Module, weights: Weights) -> bool:
    pointers = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    return any(t.untyped_storage().data_ptr() in pointers for t in weights.values())


def train_cohort(
    model: nn.Module,
    global_weights: Weights,
    clients: Sequence[ClientData],
    cfg: TrainConfig,
    *,
    seed: int,
    server_round: int,
    proximal_mu: float = 0.0,
    num_threads: int | None = 1,
) -> list[ClientUpdate]:
    """Train each client from the global weights for `cfg.local_epochs`; one update per client.

    `model` is scratch space whose parameters are overwritten; `global_weights` is not touched.
    `num_threads` sets torch's (process-wide) thread count for the call; None leaves it alone.
    """
    if proximal_mu < 0:
        raise ConfigError(f"proximal_mu must be non-negative, got {proximal_mu}")
    if _shares_memory(model, global_weights):  # e.g. the caller passed model.state_dict()
        model = copy.deepcopy(model)
    start = {name: tensor.detach().clone() for name, tensor in global_weights.items()}
    updates: list[ClientUpdate] = []
    with _torch_threads(num_threads):
        for client in clients:
            if client.num_examples == 0:
                raise ConfigError(f"client {client.client_id} has no training examples")
            model.load_state_dict(start, strict=True)
            generator = torch.Generator().manual_seed(
                client_seed(seed, server_round, client.client_id)
            )
            loss = _train_client(model, start, client, cfg, generator, proximal_mu)
            weights = {
                name: tensor.detach().to("cpu", copy=True)
                for name, tensor in model.state_dict().items()
            }
            updates.append(ClientUpdate(client.client_id, weights, client.num_examples, loss))
    return updates


def evaluate(
    model: nn.Module,
    weights: Weights,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    num_threads: int | None = 1,
) -> Evaluation:
    """Accuracy, mean cross-entropy and per-class accuracy of `weights` on (x, y).

    `num_threads` as for `train_cohort`: one thread is fastest for small models and sets.
    """
    num_examples = int(y.shape[0])
    if num_examples == 0:
        raise ConfigError("cannot evaluate on an empty set of examples")
    model.load_state_dict(weights, strict=True)
    model.eval()
    loss_sum = 0.0
    predictions = []
    with _torch_threads(num_threads), torch.inference_mode():
        for start in range(0, num_examples, _EVAL_BATCH):
            logits = model(x[start : start + _EVAL_BATCH])
            batch_y = y[start : start + _EVAL_BATCH]
            loss_sum += float(F.cross_entropy(logits, batch_y, reduction="sum"))
            predictions.append(logits.argmax(dim=1))
    correct = torch.cat(predictions) == y
    per_class: list[float | None] = []
    for label in range(num_classes):
        mask = y == label
        count = int(mask.sum())
        per_class.append(float(correct[mask].sum()) / count if count else None)
    return Evaluation(
        accuracy=float(correct.sum()) / num_examples,
        loss=loss_sum / num_examples,
        per_class_accuracy=per_class,
        num_examples=num_examples,
    )
