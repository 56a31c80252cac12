"""Fixtures for the flow and CLI tests: one Prefect test server per session, S3 stores on moto.

`prefect_harness` (session, autouse here)
    A temporary Prefect server and database for the whole session, with flow heartbeats off
    (each heartbeat thread costs ~1 s to join at the end of a flow run). Other test packages
    that run flows import it from this module.
`s3_target` (function)
    A fresh bucket on the shared moto HTTP server (`moto_server` of `tests/conftest.py`) with
    `AWS_ENDPOINT_URL` and dummy credentials in the environment: pass `.url` to a flow or the
    CLI, read what they wrote through `.store()` or `.read(key)` (raw boto3).

Helpers: `SMALL` (overrides for a few-second round), `seed_versions` (registers versions with
the orchestrator-free engine, which runs the same round steps, to set up release tests fast).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import tasks  # noqa: F401  (Fedship's Prefect defaults, before Prefect is imported)

# isort: split
import pytest
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from fl.config import load_config
from fl.engine import RunSummary, run_training
from fl.registry import Registry
from fl.store import S3Store

MODEL = "default"
# Tutorial data shrunk to five clients, three a round, one local epoch: a round takes well
# under a second of training.
SMALL = [
    "data.num_clients=5",
    "rounds.clients_per_round=3",
    "rounds.min_fit_clients=2",
    "train.local_epochs=1",
]
PASS_ALL = ["gate.min_accuracy=0.0", "gate.max_regression=1.0"]
REJECT_ALL = ["gate.min_accuracy=1.0"]


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@dataclass(frozen=True)
class S3Target:
    """A bucket/prefix the code under test opens by URL, and raw access to check its objects."""

    url: str
    bucket: str
    prefix: str
    client: Any

    def store(self) -> S3Store:
        return S3Store(self.bucket, self.prefix, self.client)

    def registry(self, model: str = MODEL) -> Registry:
        return Registry(self.store(), model)

    def read(self, key: str) -> bytes:
        """Object bytes straight from S3, bypassing Fedship's store."""
        response = self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")
        return response["Body"].read()  # type: ignore[no-any-return]

    def sha256(self, key: str) -> str:
        return hashlib.sha256(self.read(key)).hexdigest()

    def flip_byte(self, key: str, offset: int = -1) -> None:
        """Corrupt an object in place, as bit rot or a bad copy would."""
        data = bytearray(self.read(key))
        data[offset] ^= 0xFF
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=bytes(data))


@pytest.fixture
def s3_target(moto_http_url: str, moto_http_client: Any) -> S3Target:
    bucket, _, prefix = moto_http_url.removeprefix("s3://").partition("/")
    return S3Target(moto_http_url, bucket, prefix, moto_http_client)


def seed_versions(target: S3Target, gates: list[list[str]], model: str = MODEL) -> list[RunSummary]:
    """One single-round engine run per entry of `gates` (extra overrides for that round)."""
    summaries = []
    for extra in gates:
        config = load_config(preset="tutorial", overrides=[*SMALL, "rounds.per_run=1", *extra])
        summaries.append(run_training(config, model=model, store_url=target.url))
    return summaries
