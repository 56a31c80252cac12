"""Configuration: presets, files, overrides and the errors a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl.config import ConfigError, load_config


def test_tutorial_preset_reproduces_the_tutorial_defaults() -> None:
    cfg = load_config(preset="tutorial")
    assert (cfg.data.source, cfg.data.num_clients, cfg.data.samples_per_client) == (
        "synthetic",
        15,
        200,
    )
    assert (cfg.data.dim, cfg.data.num_classes, cfg.model.arch, cfg.model.hidden_dim) == (
        32,
        10,
        "mlp",
        64,
    )
    assert (cfg.rounds.clients_per_round, cfg.rounds.per_run, cfg.rounds.seed) == (8, 30, 42)
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.local_epochs) == (
        "sgd", 0.01, 32, 3)  # fmt: skip
    assert (cfg.gate.min_accuracy, cfg.gate.max_regression) == (0.7, 0.1)


def test_default_preset_is_digits_over_ten_dirichlet_clients() -> None:
    cfg = load_config()
    assert (cfg.preset, cfg.data.source, cfg.data.num_clients) == ("digits", "digits", 10)
    assert (cfg.data.partitioner, cfg.data.alpha) == ("dirichlet", 0.5)


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_file_then_overrides(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"run{suffix}"
    if suffix == ".yaml":
        path.write_text("preset: tutorial\ndata:\n  num_clients: 12\ngate:\n  min_accuracy: 0.4\n")
    else:
        path.write_text(
            'preset = "tutorial"\n[data]\nnum_clients = 12\n[gate]\nmin_accuracy = 0.4\n'
        )
    cfg = load_config(config_file=path, overrides=["gate.min_accuracy=0.5", "train.lr=0.1"])
    assert (cfg.data.num_clients, cfg.data.dim) == (12, 32)  # file over preset
    assert (cfg.gate.min_accuracy, cfg.train.lr) == (0.5, 0.1)  # overrides over file


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.alpha=-1"], "data.alpha"),
        (["data.alpha=abc"], "data.alpha"),
        (["nonsense.key=1"], "unknown configuration key 'nonsense'"),
        (["data.bogus=1"], "unknown configuration key 'data.bogus'"),
        (["model.arch=transformer"], "model.arch"),
        (["data.partitioner=random"], "data.partitioner"),
        (["rounds.clients_per_round=50"], "exceeds data.num_clients"),
        (["strategy.name=fedsgdx"], "strategy.name"),
        (["justakey"], "section.field=value"),
        (["preset=tutorial"], "with --preset"),
        (["train.lr=.inf"], "train.lr"),
        (["privacy.clip_norm=1.0", "strategy.name=median"], "cannot be combined"),
        (["strategy.name=trimmed_mean", "strategy.params={beta: 0.6}"], "strategy.params.beta"),
        (["strategy.name=krum", "strategy.params={f: 5}"], "f must be"),
        (["strategy.params={bogus: 1}"], "strategy.params.bogus"),
    ],
)
def test_invalid_values_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")) as info:
        load_config(overrides=overrides)
    assert "\n" not in str(info.value)


def test_unknown_preset_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown preset 'mnist'"):
        load_config(preset="mnist")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_file=tmp_path / "nope.yaml")
    bad = tmp_path / "run.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match=r"\.yaml, \.yml or \.toml"):
        load_config(config_file=bad)
