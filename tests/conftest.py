"""Shared object-store fixtures. Every S3 fixture talks to moto; nothing reaches real AWS.

`aws_env` (function)
    Dummy credentials, region us-east-1; removes AWS_PROFILE, AWS_ENDPOINT_URL*, the shared
    config files and instance metadata from the lookup. Use it before building any boto3 client
    from the standard chain (`open_store("s3://...")`, `S3Store(bucket)` without a client).
`moto_server` (session)
    A `moto.server.ThreadedMotoServer` on 127.0.0.1 at a free port; yields its endpoint URL.
`moto_http_client` (session)
    A boto3 S3 client for `moto_server` with dummy credentials (thread-safe; pool of 32).
`make_moto_http_store` (function)
    Factory: `make_moto_http_store(prefix="fedship", config=None) -> S3Store` on a fresh,
    empty bucket of `moto_server`, through an injected client with dummy credentials.
`moto_http_url` (function)
    `s3://<fresh bucket>/fedship` with `AWS_ENDPOINT_URL` set to `moto_server`, for code that
    builds its own store from a URL (flows, CLI, `open_store`).
`mock_aws_store` (function)
    An `S3Store` on a fresh bucket inside `moto.mock_aws` (single-threaded use only).
`store` (function; params `local`, `mock_aws`, `moto_http`)
    An empty `ObjectStore` of each kind, for conformance-style tests.
`concurrent_store` (function; params `local`, `moto_http`)
    An empty store that many threads may race on. In-process `mock_aws` is left out: its
    conditional writes check and then write without a lock, so several create-only writers can
    win.

Caution: entering `mock_aws` resets all moto state in the process, including the buckets of
`moto_server`. Never keep a moto bucket across tests; every fixture here makes a fresh one.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from moto import mock_aws
from moto.server import ThreadedMotoServer

from fl.config import StoreConfig
from fl.store import LocalStore, ObjectStore, S3Store

REGION = "us-east-1"
DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
STORE_PREFIX = "fedship"
# Keys a store must never list: a sibling prefix that shares the store prefix as a string.
DECOY_KEYS = (f"{STORE_PREFIX}-decoy/object", "outside.bin")

MakeS3Store = Callable[..., S3Store]


@pytest.fixture(scope="session")
def aws_test_session() -> boto3.session.Session:
    """One boto3 session with dummy credentials; clients made from it skip reloading models."""
    return boto3.session.Session(region_name=REGION, **DUMMY_CREDENTIALS)


def s3_test_client(session: boto3.session.Session, endpoint_url: str | None = None) -> Any:
    """A client with a connection pool big enough for 16 racing threads."""
    return session.client(
        "s3", endpoint_url=endpoint_url, config=BotoConfig(max_pool_connections=32)
    )


def fresh_bucket(client: Any) -> str:
    bucket = f"fedship-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    for key in DECOY_KEYS:
        client.put_object(Bucket=bucket, Key=key, Body=b"decoy")
    return bucket


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    missing = tmp_path_factory.getbasetemp() / "no-aws-config"
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    access_log = logging.getLogger("werkzeug")  # one line per request otherwise
    level = access_log.level
    access_log.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        access_log.setLevel(level)


@pytest.fixture(scope="session")
def moto_http_client(moto_server: str, aws_test_session: boto3.session.Session) -> Any:
    return s3_test_client(aws_test_session, moto_server)


@pytest.fixture
def make_moto_http_store(moto_http_client: Any) -> MakeS3Store:
    client = moto_http_client

    def make(prefix: str = STORE_PREFIX, config: StoreConfig | None = None) -> S3Store:
        return S3Store(fresh_bucket(client), prefix, client, config=config)

    return make


@pytest.fixture
def moto_http_url(
    moto_server: str, moto_http_client: Any, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return f"s3://{fresh_bucket(moto_http_client)}/{STORE_PREFIX}"


@pytest.fixture
def mock_aws_store(aws_env: None, aws_test_session: boto3.session.Session) -> Iterator[S3Store]:
    with mock_aws():
        client = s3_test_client(aws_test_session)
        yield S3Store(fresh_bucket(client), STORE_PREFIX, client)


def _store_of_kind(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if kind == "local":
        return LocalStore(tmp_path / "store")
    if kind == "mock_aws":
        return request.getfixturevalue("mock_aws_store")  # type: ignore[no-any-return]
    return request.getfixturevalue("make_moto_http_store")()  # type: ignore[no-any-return]


@pytest.fixture(params=["local", "mock_aws", "moto_http"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return _store_of_kind(request.param, request, tmp_path)


@pytest.fixture(params=["local", "moto_http"])
def concurrent_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return _store_of_kind(request.param, request, tmp_path)
