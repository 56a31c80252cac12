"""Which failures are worth retrying."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from fl.errors import FedshipError, StoreError


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry storage and unexpected errors; a refusal (nothing to roll back to, too few clients,
    a checksum mismatch) gives the same answer every time, so it fails at once."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, FedshipError) or isinstance(error, StoreError)


IO: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=0.5),
    "retry_jitter_factor": 0.2,
    "retry_condition_fn": transient_only,
    "timeout_seconds": 300,
}
"""Options of every task that reads or writes the store."""
