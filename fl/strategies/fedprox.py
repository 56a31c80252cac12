"""FedProx (Li et al. 2020): FedAvg on the server; clients add (mu / 2) * ||w - w_global||^2."""

from __future__ import annotations

from fl.strategies.base import SERVER_LR, Param, non_negative
from fl.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """Sends `proximal_mu` to the clients (the key Flower's FedProx uses); aggregates as FedAvg."""

    name = "fedprox"
    param_specs = {
        "server_lr": SERVER_LR,
        "mu": Param(0.01, non_negative(), "a finite number >= 0"),
    }

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.mu = float(self.params["mu"])

    def configure_train(self, server_round: int) -> dict[str, float]:
        return {**super().configure_train(server_round), "proximal_mu": self.mu}
