"""FedAdam: see `fl.strategies.adaptive` for the update rule (Reddi et al. 2021)."""

from fl.strategies.adaptive import FedAdam

__all__ = ["FedAdam"]
