"""`open_store` URL handling, the FEDSHIP_STORE default, and the S3 client settings it applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from fl.config import StoreConfig
from fl.errors import ConfigError, PreconditionFailed, StoreError
from fl.store import LocalStore, S3Store, open_store


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "store_url"),
    [
        ("s3://models", "models", "", "s3://models"),
        ("s3://models/", "models", "", "s3://models"),
        ("s3://models/fedship", "models", "fedship", "s3://models/fedship"),
        ("s3://models/team/fedship/", "models", "team/fedship", "s3://models/team/fedship"),
        ("S3://models/fedship", "models", "fedship", "s3://models/fedship"),
    ],
)
def test_s3_urls(url: str, bucket: str, prefix: str, store_url: str, aws_env: None) -> None:
    store = open_store(url, client=object())

    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.url) == (bucket, prefix, store_url)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("file://{tmp}/abs", "{tmp}/abs"),
        ("file://rel/dir", "{cwd}/rel/dir"),
        ("{tmp}/plain", "{tmp}/plain"),
        ("plain/relative", "{cwd}/plain/relative"),
        ("~/in-home", "{home}/in-home"),
        ("file://{tmp}/with%20space", "{tmp}/with space"),
    ],
)
def test_local_urls(
    target: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    values = {"tmp": tmp_path, "cwd": cwd, "home": home}

    store = open_store(target.format(**values))

    assert isinstance(store, LocalStore)
    assert store.root == Path(expected.format(**values))


def test_path_objects_are_accepted(tmp_path: Path) -> None:
    store = open_store(tmp_path / "store")

    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "store"


def test_local_store_url_round_trips(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "a dir" / "store"))
    store.put("k", b"v")

    reopened = open_store(store.url)

    assert isinstance(reopened, LocalStore)
    assert reopened.root == tmp_path / "a dir" / "store"
    assert reopened.get("k").data == b"v"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/x",
        "gs://bucket/x",
        "http://host/x",
        "s3://",
        "s3:///prefix",
        "s3:bucket/x",
        "s3://Bad_Bucket/x",
        "s3://bucket/a//b",
        "s3://bucket/x?versionId=1",
        "file://",
        "   ",
    ],
)
def test_bad_urls_raise_config_error_naming_the_url(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_store(url)

    message = str(raised.value)
    assert repr(url) in message
    assert "\n" not in message


@pytest.mark.parametrize("url", ["ftp://host/x", "gs://bucket/x", "s3://"])
def test_unsupported_urls_list_the_accepted_forms(url: str) -> None:
    with pytest.raises(ConfigError, match=r"s3://bucket\[/prefix\].*file://.*plain path"):
        open_store(url)


def test_root_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    root = tmp_path / "not-a-dir"
    root.write_text("oops")

    with pytest.raises(ConfigError, match=str(root)):  # a bad --store: a usage error, exit 2
        open_store(str(root))


def test_home_of_unknown_user_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot expand"):
        open_store("~no-such-user-fedship/store")


def test_root_replaced_by_a_file_is_a_store_error(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    (tmp_path / "store").write_text("oops")  # the root is created lazily, so this takes its place

    for call in (lambda: store.get("k"), lambda: store.put("k", b"v"), lambda: store.list("")):
        with pytest.raises(StoreError, match=str(tmp_path / "store")):
            call()


def test_default_is_fedship_store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSHIP_STORE", str(tmp_path / "from-env"))

    for target in (None, StoreConfig()):
        store = open_store(target)
        assert isinstance(store, LocalStore)
        assert store.root == tmp_path / "from-env"


def test_env_may_name_an_s3_store(monkeypatch: pytest.MonkeyPatch, aws_env: None) -> None:
    monkeypatch.setenv("FEDSHIP_STORE", "s3://models/fedship")

    store = open_store(client=object())

    assert isinstance(store, S3Store)
    assert store.url == "s3://models/fedship"


def test_default_without_env_is_dot_fedship(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDSHIP_STORE", raising=False)
    monkeypatch.chdir(tmp_path)

    store = open_store()

    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / ".fedship"


def test_explicit_url_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSHIP_STORE", str(tmp_path / "from-env"))

    store = open_store(StoreConfig(url=str(tmp_path / "explicit")))

    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "explicit"


def test_built_client_applies_endpoint_region_and_retries(aws_env: None) -> None:
    config = StoreConfig(
        url="s3://models/fedship",
        endpoint_url="http://127.0.0.1:9",
        region="eu-west-3",
        retry_mode="adaptive",
        max_attempts=7,
    )

    store = open_store(config)

    assert isinstance(store, S3Store)
    meta = store.client.meta
    assert meta.endpoint_url == "http://127.0.0.1:9"
    assert meta.region_name == "eu-west-3"
    # StoreConfig.max_attempts counts the first try, like AWS_MAX_ATTEMPTS.
    assert meta.config.retries == {"mode": "adaptive", "total_max_attempts": 7}


def test_endpoint_comes_from_aws_endpoint_url_when_unset(
    moto_http_url: str, moto_server: str
) -> None:
    store = open_store(moto_http_url)

    assert isinstance(store, S3Store)
    assert store.client.meta.endpoint_url == moto_server
    store.put("k", b"v")
    assert store.get("k").data == b"v"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (StoreConfig(), {}),
        (StoreConfig(sse="AES256"), {"ServerSideEncryption": "AES256"}),
        (
            StoreConfig(sse="aws:kms", kms_key_id="alias/fedship"),
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/fedship"},
        ),
    ],
    ids=["none", "aes256", "kms"],
)
def test_server_side_encryption_on_every_write(
    make_moto_http_store: Any, config: StoreConfig, expected: dict[str, str]
) -> None:
    store = make_moto_http_store(config=config)
    token = store.put_if_absent("created", b"1")
    store.put_if_match("created", b"2", token)
    store.put("written", b"3")

    for key in ("created", "written"):
        head = store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
        sent = {
            name: head[name] for name in ("ServerSideEncryption", "SSEKMSKeyId") if name in head
        }
        assert sent == expected, key


def test_missing_bucket_is_one_sentence_naming_it(make_moto_http_store: Any) -> None:
    existing = make_moto_http_store()
    store = S3Store("fedship-no-such-bucket", "p", existing.client)

    for call in (lambda: store.get("k"), lambda: store.put("k", b"v"), lambda: store.list("")):
        with pytest.raises(StoreError, match="'fedship-no-such-bucket' does not exist"):
            call()


def test_unreachable_endpoint_is_a_store_error(aws_env: None) -> None:
    config = StoreConfig(url="s3://models", endpoint_url="http://127.0.0.1:9", max_attempts=1)

    with pytest.raises(StoreError, match="could not reach the S3 endpoint http://127.0.0.1:9"):
        open_store(config).get("k")


# -- S3 errors the moto backends never produce ----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "expected", "match"),
    [
        ("ConditionalRequestConflict", 409, PreconditionFailed, "changed"),
        ("PreconditionFailed", 412, PreconditionFailed, "changed"),
        ("NoSuchKey", 404, PreconditionFailed, "does not exist"),
        ("AccessDenied", 403, StoreError, "access denied .* s3://models/fedship"),
        ("SlowDown", 503, StoreError, r"S3 refused .* \(SlowDown\)"),
    ],
)
def test_compare_and_swap_error_mapping(
    aws_test_session: Any, code: str, status: int, expected: type[Exception], match: str
) -> None:
    client = aws_test_session.client("s3")
    store = S3Store("models", "fedship", client)
    with Stubber(client) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        with pytest.raises(expected, match=match) as raised:
            store.put_if_match("alias", b"v", '"etag"')
        stub.assert_no_pending_responses()
    assert expected is StoreError or isinstance(raised.value, PreconditionFailed)


def test_missing_credentials_is_one_sentence(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    with pytest.raises(StoreError, match="no usable AWS credentials .* s3://models"):
        open_store("s3://models").get("k")
