"""Whole runs in plain Python (no Prefect): the tutorial's outcome, digits' accuracy, resuming."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl.config import ConfigError, load_config
from fl.engine import run_training
from fl.registry import Registry
from fl.store import LocalStore

TUTORIAL_FINAL_ACCURACY = 0.4767  # the tutorial's own printed result with its defaults


def test_tutorial_preset_matches_tutorial_and_promotes_nothing(tmp_path: Path) -> None:
    summary = run_training(load_config(preset="tutorial"), store_url=str(tmp_path))
    assert summary.rounds_completed == 30
    assert summary.final_accuracy == pytest.approx(TUTORIAL_FINAL_ACCURACY, abs=0.05)
    assert summary.versions_promoted == [] and summary.production is None
    reg = Registry(LocalStore(tmp_path), "default")
    manifests = reg.list_versions(limit=100)
    assert len(manifests) == 30
    assert all(not m["gate"]["passed"] for m in manifests)
    assert all("minimum 0.7" in m["gate"]["reasons"][0] for m in manifests)


def test_digits_reaches_092_within_30_rounds_and_promotes(tmp_path: Path) -> None:
    summary = run_training(load_config(preset="digits"), store_url=str(tmp_path))
    assert max(r.accuracy for r in summary.rounds) >= 0.92
    assert summary.final_accuracy is not None and summary.final_accuracy >= 0.92
    assert summary.versions_promoted and summary.production == summary.versions_promoted[-1]


def test_second_run_continues_rounds_versions_and_lineage(tmp_path: Path) -> None:
    config = load_config(preset="tutorial", overrides=["rounds.per_run=2", "gate.min_accuracy=0.0"])
    first = run_training(config, store_url=str(tmp_path))
    second = run_training(config, store_url=str(tmp_path))
    assert [r.round for r in first.rounds] == [1, 2] and [r.round for r in second.rounds] == [3, 4]
    assert second.versions_registered == [3, 4] and second.resumed_from == "checkpoint"
    reg = Registry(LocalStore(tmp_path), "default")
    assert reg.manifest(3)["parent_version"] == 2 and reg.manifest(1)["parent_version"] is None
    assert not list(reg.store.list("models/default/scratch/"))


def test_resume_is_exact_for_plain_fedavg(tmp_path: Path) -> None:
    """Four rounds in one run equal two runs of two rounds: same weights, same checksums."""
    overrides = ["gate.min_accuracy=0.0", "gate.max_regression=1.0"]
    one = run_training(load_config(preset="tutorial", overrides=[*overrides, "rounds.per_run=4"]),
                       store_url=str(tmp_path / "a"))  # fmt: skip
    two = load_config(preset="tutorial", overrides=[*overrides, "rounds.per_run=2"])
    run_training(two, store_url=str(tmp_path / "b"))
    run_training(two, store_url=str(tmp_path / "b"))
    a = Registry(LocalStore(tmp_path / "a"), "default").manifest(4)
    b = Registry(LocalStore(tmp_path / "b"), "default").manifest(4)
    assert a["sha256"] == b["sha256"] and one.rounds_completed == 4


def test_training_after_a_rollback_continues_from_the_rolled_back_version(tmp_path: Path) -> None:
    config = load_config(preset="tutorial", overrides=["rounds.per_run=3", "gate.min_accuracy=0.0",
                                                       "gate.max_regression=1.0"])  # fmt: skip
    run_training(config, store_url=str(tmp_path))
    reg = Registry(LocalStore(tmp_path), "default")
    assert reg.resolve("production") == 3
    reg.rollback(to=1, reason="incident")
    after = run_training(config.model_copy(deep=True), store_url=str(tmp_path))
    assert after.resumed_from == "rollback" and after.rounds[0].round == 4
    assert reg.manifest(4)["parent_version"] == 1


def test_changed_architecture_on_resume_is_a_config_error(tmp_path: Path) -> None:
    config = load_config(preset="tutorial", overrides=["rounds.per_run=1"])
    run_training(config, store_url=str(tmp_path))
    wider = load_config(preset="tutorial", overrides=["rounds.per_run=1", "model.hidden_dim=32"])
    with pytest.raises(ConfigError, match=r"tensor 'net\.0\.weight' is shape \(64, 32\)"):
        run_training(wider, store_url=str(tmp_path))


def test_dp_switched_on_mid_lineage_claims_no_finite_epsilon(tmp_path: Path) -> None:
    base = ["gate.min_accuracy=0.0", "gate.max_regression=1.0"]
    run_training(load_config(preset="tutorial", overrides=[*base, "rounds.per_run=2"]),
                 store_url=str(tmp_path))  # fmt: skip
    private = [*base, "rounds.per_run=2", "privacy.clip_norm=1.0", "privacy.noise_multiplier=1.0",
               "gate.max_epsilon=100"]  # fmt: skip
    summary = run_training(
        load_config(preset="tutorial", overrides=private), store_url=str(tmp_path)
    )
    reg = Registry(LocalStore(tmp_path), "default")
    for version in summary.versions_registered:
        privacy = reg.manifest(version)["privacy"]
        assert (
            privacy["epsilon"] is None and "without differential-privacy" in privacy["epsilon_note"]
        )
    assert summary.versions_promoted == []  # the budget check cannot pass without a guarantee
