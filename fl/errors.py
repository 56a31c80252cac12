"""Exception types. Each carries one sentence that names the bad value and what is accepted."""

from __future__ import annotations


class FedshipError(Exception):
    """Base class of every error Fedship raises on purpose."""


class ConfigError(FedshipError, ValueError):
    """A configuration value, file or override is invalid."""


class StoreError(FedshipError):
    """The object store could not be reached, or refused the request."""


class ObjectNotFound(StoreError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "object not found"


class PreconditionFailed(StoreError):
    """A create-only or compare-and-swap write lost: the object exists or changed."""


class IntegrityError(FedshipError):
    """Stored bytes do not match the checksum recorded at registration, or are not a model."""


class RegistryError(FedshipError):
    """A registry operation is impossible: unknown model or version, nothing to roll back to."""


class AggregationError(FedshipError, ValueError):
    """A client update cannot be aggregated with the global model."""


class RoundError(FedshipError):
    """A training round could not complete (for example too few clients succeeded)."""


class PromotionRefused(FedshipError):
    """The gate refused a promotion and it was not forced."""


class AliasMoved(RegistryError):
    """An alias changed between deciding on a change and making it."""
