"""`fedship` commands in-process (typer's CliRunner) against moto S3 and the session's Prefect.

Every error is one line on stderr, no traceback, with exit code 1 (refused: unknown model or
version, nothing to roll back to) or 2 (usage or configuration).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from tests.flows.conftest import MODEL, PASS_ALL, REJECT_ALL, SMALL, S3Target, seed_versions

TRAIN_KEYS = {
    "run_id", "rounds_completed", "versions_registered", "versions_promoted", "production",
    "final_accuracy",
}  # fmt: skip
VERSION_KEYS = {"version", "sha256", "metrics", "round", "gate", "aliases", "uri"}
CHANGE_KEYS = {"alias", "from_version", "to_version"}


def fedship(*args: str) -> Result:
    from flows.cli import app

    # click >= 8.2 always keeps stderr apart (`result.stderr`) and mixes both in `output`.
    return CliRunner().invoke(app, list(args))


def succeeded(result: Result) -> Any:
    """The JSON a successful `--json` command printed on stdout."""
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, exit_code: int, fragment: str) -> None:
    assert result.exit_code == exit_code, result.output + repr(result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert fragment in lines[0]


def overrides(*extra: str) -> list[str]:
    return [arg for item in [*SMALL, *extra] for arg in ("--set", item)]


def test_train_json_prints_the_run_summary(s3_target: S3Target) -> None:
    result = fedship(
        "train", "--store", s3_target.url, "--preset", "tutorial", "--rounds", "2",
        *overrides(*PASS_ALL), "--json",
    )  # fmt: skip

    summary = succeeded(result)
    assert set(summary) == TRAIN_KEYS
    assert summary["rounds_completed"] == 2
    assert summary["versions_registered"] == summary["versions_promoted"] == [1, 2]
    production = s3_target.registry().alias_state()
    assert production is not None and summary["production"] == production["version"] == 2
    manifest = s3_target.registry().manifest(2)
    assert summary["final_accuracy"] == manifest["metrics"]["accuracy"]
    assert manifest["run_id"] == summary["run_id"]


def test_versions_json_lists_newest_first(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL, REJECT_ALL, PASS_ALL])

    rows = succeeded(fedship("versions", "--store", s3_target.url, "--json"))

    assert [row["version"] for row in rows] == [3, 2, 1]
    registry = s3_target.registry()
    for row in rows:
        assert set(row) >= VERSION_KEYS
        assert isinstance(row["version"], int)
        manifest = registry.manifest(row["version"])
        assert (
            row["sha256"]
            == manifest["sha256"]
            == s3_target.sha256(registry.model_key(row["version"]))
        )
        assert row["metrics"]["accuracy"] == manifest["metrics"]["accuracy"]
        assert row["round"] == manifest["round"]
        assert row["gate"] == {
            "passed": manifest["gate"]["passed"],
            "reasons": manifest["gate"]["reasons"],
        }
        assert (
            row["uri"]
            == f"{s3_target.url}/models/{MODEL}/versions/{row['version']}/model.safetensors"
        )
    assert [(row["gate"]["passed"], row["aliases"]) for row in rows] == [
        (True, ["production"]), (False, []), (True, []),
    ]  # fmt: skip

    page = succeeded(
        fedship("versions", "--store", s3_target.url, "--limit", "1", "--before", "3", "--json")
    )
    assert [row["version"] for row in page] == [2]


def test_show_json_is_the_whole_manifest_and_its_uri(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL])

    shown = succeeded(fedship("show", "1", "--store", s3_target.url, "--json"))

    manifest = s3_target.registry().manifest(1)
    assert {k: shown[k] for k in manifest} == manifest
    assert shown["uri"] == s3_target.registry().uri(1)
    assert succeeded(fedship("show", "production", "--store", s3_target.url, "--json")) == shown


def test_promote_and_rollback_json_print_the_alias_change(s3_target: S3Target) -> None:
    seed_versions(s3_target, [PASS_ALL, PASS_ALL])  # production 1 -> 2

    promoted = succeeded(fedship("promote", "1", "--store", s3_target.url, "--json"))
    rolled_back = succeeded(
        fedship(
            "rollback", "--reason", "v1 regressed on canary", "--store", s3_target.url, "--json"
        )
    )
    again = succeeded(
        fedship("rollback", "--to", "2", "--reason", "same", "--store", s3_target.url, "--json")
    )

    assert set(promoted) >= CHANGE_KEYS and set(rolled_back) >= CHANGE_KEYS
    assert {k: promoted[k] for k in CHANGE_KEYS} == {
        "alias": "production",
        "from_version": 2,
        "to_version": 1,
    }
    assert {k: rolled_back[k] for k in CHANGE_KEYS} == {
        "alias": "production",
        "from_version": 1,
        "to_version": 2,
    }
    assert (again["to_version"], again["changed"]) == (2, False)
    audit = s3_target.registry().audit_log()
    assert [(r["action"], r["to_version"]) for r in audit[:2]] == [("rollback", 2), ("promote", 1)]
    assert audit[0]["reason"] == "v1 regressed on canary"


ERRORS = {  # id: (arguments, exit code, part of the one-line message)
    "unknown-model": (["versions", "--model", "nope"], 1, "model 'nope' not found"),
    "show-missing-version": (["show", "99"], 1, "has no version 99"),
    "promote-missing-version": (["promote", "99"], 1, "has no version 99"),
    "rollback-no-history": (["rollback", "--reason", "r"], 1, "nothing to roll back"),
    "force-without-reason": (["promote", "1", "--force"], 2, "--force needs --reason"),
    "unknown-config-key": (["train", "--set", "nonsense.key=1"], 2, "nonsense"),
}


@pytest.mark.parametrize(("args", "exit_code", "fragment"), ERRORS.values(), ids=ERRORS.keys())
def test_refusals_and_usage_errors_are_one_line(
    s3_target: S3Target, args: list[str], exit_code: int, fragment: str
) -> None:
    seed_versions(s3_target, [PASS_ALL])  # one version, production, no history to go back to
    before = (s3_target.registry().alias_state(), s3_target.registry().audit_log())

    result = fedship(*args, "--store", s3_target.url)

    assert_one_line_error(result, exit_code, fragment)
    assert (s3_target.registry().alias_state(), s3_target.registry().audit_log()) == before


@pytest.mark.parametrize(
    "command", [["versions"], ["show", "1"], ["train"], ["rollback", "--reason", "r"]]
)
def test_unsupported_store_url_is_a_usage_error(command: list[str]) -> None:
    result = fedship(*command, "--store", "ftp://x")

    assert_one_line_error(result, 2, "store URL 'ftp://x' is not supported")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rollback"], "Missing option '--reason'"),
        (["versions", "--bogus"], "No such option: --bogus"),
        (["train", "--rounds", "0"], "Invalid value for '--rounds'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    """Through the real entry point (a subprocess), as a user meets it."""
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args, "--store", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
