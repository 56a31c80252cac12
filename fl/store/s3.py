"""An S3 bucket (or any S3-compatible service) under a key prefix as an object store.

Create-only writes use `PutObject` with `If-None-Match: *` and compare-and-swap uses
`If-Match: <ETag>`; both are atomic on S3 itself, so no lock service is needed. The token is the
ETag exactly as S3 returns it (quotes included). Errors become `ObjectNotFound`,
`PreconditionFailed` or `StoreError` with one sentence naming the bucket or endpoint.

The boto3 client is injected (tests pass moto's) or built from a `StoreConfig`; credentials
always come from the standard AWS chain and are never read or logged here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, NoReturn

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from fl.config import StoreConfig
from fl.errors import ConfigError, ObjectNotFound, PreconditionFailed, StoreError
from fl.store.base import StoredObject
from fl.store.local import check_key, check_prefix

S3Client = Any  # botocore clients are generated at runtime; no stubs are installed

BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
LOST_RACE_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
CREDENTIAL_CODES = {
    "AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired",
}  # fmt: skip


def build_client(config: StoreConfig) -> S3Client:
    """An S3 client from typed settings; unset values fall through to boto3's own defaults.

    `endpoint_url` and `region` are passed only when set, so `AWS_ENDPOINT_URL`, `AWS_REGION`
    and the shared config file keep working. `max_attempts` counts the first try, as
    `AWS_MAX_ATTEMPTS` does; botocore's own `retries["max_attempts"]` would count retries only
    (one more request), hence `total_max_attempts`.
    """
    retries = {"mode": config.retry_mode, "total_max_attempts": config.max_attempts}
    kwargs: dict[str, Any] = {"config": BotoConfig(retries=retries)}
    if config.endpoint_url:
        kwargs["endpoint_url"] = config.endpoint_url
    if config.region:
        kwargs["region_name"] = config.region
    try:
        return boto3.session.Session().client("s3", **kwargs)
    except (BotoCoreError, ValueError) as err:
        raise StoreError(
            f"could not create an S3 client for {config.endpoint_url or 'AWS'}: {err}"
        ) from err


class S3Store:
    """An `ObjectStore` over `s3://bucket/prefix`.

    `config` supplies server-side encryption for every write and, when no `client` is injected,
    the endpoint, region and retry policy of the client built here.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: S3Client | None = None,
        *,
        config: StoreConfig | None = None,
    ) -> None:
        if not BUCKET_NAME.match(bucket):
            raise ConfigError(
                f"S3 bucket name {bucket!r} is invalid: use 3-63 lowercase letters, digits, "
                "dots or hyphens"
            )
        prefix = prefix.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except StoreError:
                raise ConfigError(
                    f"S3 key prefix {prefix!r} is invalid: use '/'-separated names without "
                    "empty, '.' or '..' segments or backslashes"
                ) from None
        self.bucket = bucket
        self.prefix = prefix
        self.config = config or StoreConfig()
        self.client = client if client is not None else build_client(self.config)
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._write_args: dict[str, str] = {}
        if self.config.sse:
            self._write_args["ServerSideEncryption"] = self.config.sse
        if self.config.kms_key_id:
            self._write_args["SSEKMSKeyId"] = self.config.kms_key_id

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    # -- reads ------------------------------------------------------------------------------

    def get(self, key: str) -> StoredObject:
        full_key = self._full_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full_key)
            data = response["Body"].read()
        except ClientError as err:
            if _code(err) in MISSING_KEY_CODES:
                raise ObjectNotFound(f"object {key!r} not found in {self.url}") from None
            self._raise(err, "read", key)
        except BotoCoreError as err:
            self._raise(err, "read", key)
        return StoredObject(data=data, token=response["ETag"])

    def exists(self, key: str) -> bool:
        # HEAD has no error body, so a missing bucket also reads as 404 (`get` tells them apart).
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        except ClientError as err:
            if _code(err) in MISSING_KEY_CODES:
                return False
            self._raise(err, "check", key)
        except BotoCoreError as err:
            self._raise(err, "check", key)
        return True

    def list(self, prefix: str) -> Iterator[str]:
        check_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            for page in pages:
                keys.extend(item["Key"].removeprefix(base) for item in page.get("Contents", ()))
        except (ClientError, BotoCoreError) as err:
            self._raise(err, "list", prefix or "(all keys)")
        return iter(sorted(keys))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full_key(key)}"

    # -- writes -----------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> str:
        return self._put(key, data, "write")

    def put_if_absent(self, key: str, data: bytes) -> str:
        return self._put(key, data, "create", IfNoneMatch="*")

    def put_if_match(self, key: str, data: bytes, token: str) -> str:
        return self._put(key, data, "compare-and-swap", IfMatch=token)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._full_key(key))
        except (ClientError, BotoCoreError) as err:
            if isinstance(err, ClientError) and _code(err) == "NoSuchKey":
                return  # S3 itself answers 204; some compatible services say NoSuchKey
            self._raise(err, "delete", key)

    # -- internals --------------------------------------------------------------------------

    def _full_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _put(self, key: str, data: bytes, action: str, **condition: str) -> str:
        try:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=self._full_key(key),
                Body=data,
                **condition,
                **self._write_args,
            )
        except ClientError as err:
            code = _code(err)
            if condition and code in LOST_RACE_CODES:
                state = "already exists" if "IfNoneMatch" in condition else "changed"
                raise PreconditionFailed(f"object {key!r} in {self.url} {state}") from None
            if "IfMatch" in condition and code in MISSING_KEY_CODES:
                raise PreconditionFailed(
                    f"object {key!r} does not exist in {self.url}; nothing to compare-and-swap"
                ) from None
            self._raise(err, action, key)
        except BotoCoreError as err:
            self._raise(err, action, key)
        return str(response["ETag"])

    def _raise(self, err: ClientError | BotoCoreError, action: str, key: str) -> NoReturn:
        """Turn a boto error into one `StoreError` sentence naming the bucket or endpoint."""
        endpoint = self.client.meta.endpoint_url
        if isinstance(err, NoCredentialsError | PartialCredentialsError):
            message = (
                f"no usable AWS credentials to {action} {key!r} in {self.url}: set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role"
            )
        elif isinstance(err, EndpointConnectionError | ConnectTimeoutError):
            message = (
                f"could not reach the S3 endpoint {endpoint} to {action} {key!r} in {self.url}"
            )
        elif isinstance(err, ClientError) and _code(err) == "NoSuchBucket":
            message = f"S3 bucket {self.bucket!r} does not exist at {endpoint}"
        elif isinstance(err, ClientError) and _code(err) in CREDENTIAL_CODES:
            message = (
                f"access denied to {action} {key!r} in {self.url} at {endpoint} "
                f"({_code(err)}): check the AWS credentials and the bucket policy"
            )
        elif isinstance(err, ClientError):
            detail = err.response.get("Error", {}).get("Message") or _code(err)
            message = f"S3 refused to {action} {key!r} in {self.url} ({_code(err)}): {detail}"
        else:
            message = f"S3 request to {action} {key!r} in {self.url} at {endpoint} failed: {err}"
        raise StoreError(message) from err


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))
