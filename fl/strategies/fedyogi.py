"""FedYogi: see `fl.strategies.adaptive` for the update rule (Reddi et al. 2021)."""

from fl.strategies.adaptive import FedYogi

__all__ = ["FedYogi"]
