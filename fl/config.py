"""Run configuration: pydantic models whose dotted field names are the public interface.

`--set data.alpha=0.1` on the CLI and the keys of a YAML or TOML config file both address the
fields below. Unknown keys are errors; invalid values raise `ConfigError` naming the field.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fl.errors import ConfigError

DEFAULT_STORE = "./.fedship"
STORE_ENV = "FEDSHIP_STORE"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(Section):
    source: Literal["synthetic", "digits", "npz"] = "digits"
    path: str | None = Field(
        default=None, description="npz source: directory or store URL of client_<id>.npz files"
    )
    partitioner: Literal["iid", "dirichlet", "shards"] = "dirichlet"
    num_clients: int = Field(default=10, ge=1, le=100_000)
    alpha: float = Field(default=0.5, gt=0, description="Dirichlet concentration (label skew)")
    shards_per_client: int = Field(default=2, ge=1)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    samples_per_client: int = Field(default=200, ge=1, description="synthetic source only")
    holdout_samples: int = Field(default=300, ge=1, description="synthetic source only")
    dim: int = Field(default=32, ge=1, description="synthetic source only")
    num_classes: int = Field(default=10, ge=2, description="synthetic source only")


class ModelConfig(Section):
    arch: str = Field(default="mlp", description="mlp, cnn or package.module:factory")
    hidden_dim: int = Field(default=64, ge=1)

    @field_validator("arch")
    @classmethod
    def _arch_known(cls, value: str) -> str:
        if value in ("mlp", "cnn") or (":" in value and all(value.split(":", 1))):
            return value
        raise ValueError(f"must be 'mlp', 'cnn' or 'package.module:factory', got {value!r}")


class TrainConfig(Section):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=32, ge=1)
    local_epochs: int = Field(default=2, ge=1)


class RoundsConfig(Section):
    per_run: int = Field(default=30, ge=1, description="rounds this run executes")
    clients_per_round: int = Field(default=8, ge=1)
    min_fit_clients: int = Field(default=2, ge=1)
    seed: int = Field(default=42, ge=0)
    dropout_rate: float = Field(default=0.0, ge=0, lt=1, description="simulated client failures")
    clients_per_task: int = Field(
        default=0, ge=0, description="clients trained by one task; 0 means one task per client"
    )


class GateConfig(Section):
    min_accuracy: float = Field(default=0.85, ge=0, le=1)
    max_regression: float = Field(
        default=0.02, ge=0, le=1, description="largest accuracy drop allowed against production"
    )
    require_finite_loss: bool = True
    min_clients: int | None = Field(
        default=None, ge=1, description="default: rounds.min_fit_clients"
    )
    max_epsilon: float | None = Field(default=None, gt=0)
    allow_attack: bool = False
    on_reject: Literal["revert", "continue"] = "revert"


class StoreConfig(Section):
    url: str | None = Field(
        default=None, description=f"default: ${STORE_ENV}, else {DEFAULT_STORE}"
    )
    endpoint_url: str | None = None
    region: str | None = None
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None
    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _kms_needs_key(self) -> StoreConfig:
        if self.kms_key_id and self.sse != "aws:kms":
            raise ValueError("store.kms_key_id is only used with store.sse='aws:kms'")
        return self

    def resolved_url(self) -> str:
        return self.url or os.environ.get(STORE_ENV) or DEFAULT_STORE


STRATEGIES = (
    "fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox",
    "median", "trimmed_mean", "krum", "multikrum",
)  # fmt: skip


ROBUST_STRATEGIES = ("median", "trimmed_mean", "krum", "multikrum")


class StrategyConfig(Section):
    name: str = "fedavg"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_known(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"must be one of {', '.join(STRATEGIES)}; got {value!r}")
        return value


class PrivacyConfig(Section):
    clip_norm: float | None = Field(default=None, gt=0)
    noise_multiplier: float = Field(default=0.0, ge=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)


class ScreeningConfig(Section):
    max_norm: float | None = Field(default=None, gt=0, description="absolute bound on delta L2")
    max_norm_factor: float | None = Field(
        default=None, ge=1, description="bound as k times the round's median delta norm"
    )


class AttackConfig(Section):
    kind: Literal["sign_flip", "gaussian"] | None = None
    num_clients: int = Field(default=0, ge=0)
    scale: float = Field(default=10.0, gt=0)


class RunConfig(Section):
    preset: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    rounds: RoundsConfig = Field(default_factory=RoundsConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    screening: ScreeningConfig = Field(default_factory=ScreeningConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.rounds.clients_per_round > self.data.num_clients:
            raise ValueError(
                f"rounds.clients_per_round ({self.rounds.clients_per_round}) exceeds "
                f"data.num_clients ({self.data.num_clients})"
            )
        if self.rounds.min_fit_clients > self.rounds.clients_per_round:
            raise ValueError(
                f"rounds.min_fit_clients ({self.rounds.min_fit_clients}) exceeds "
                f"rounds.clients_per_round ({self.rounds.clients_per_round})"
            )
        if self.data.source == "npz" and not self.data.path:
            raise ValueError("data.path is required when data.source is 'npz'")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {self.preset!r}")
        if self.privacy.clip_norm is not None and self.strategy.name in ROBUST_STRATEGIES:
            raise ValueError(
                f"privacy.clip_norm (DP-FedAvg) replaces the aggregation rule, so it cannot be "
                f"combined with strategy.name={self.strategy.name!r}; use a FedAvg-family strategy"
            )
        if self.attack.num_clients > self.rounds.clients_per_round:
            raise ValueError(
                f"attack.num_clients ({self.attack.num_clients}) exceeds "
                f"rounds.clients_per_round ({self.rounds.clients_per_round})"
            )
        return self

    def fingerprint_payload(self) -> dict[str, Any]:
        """The config as recorded in manifests (JSON-safe)."""
        return json.loads(self.model_dump_json())


PRESETS: dict[str, dict[str, Any]] = {
    # Digits over 10 clients with Dirichlet(0.5) label skew: the default.
    "digits": {},
    # The tutorial's defaults, exactly.
    "tutorial": {
        "data": {
            "source": "synthetic",
            "partitioner": "iid",
            "num_clients": 15,
            "samples_per_client": 200,
            "holdout_samples": 300,
            "dim": 32,
            "num_classes": 10,
        },
        "model": {"arch": "mlp", "hidden_dim": 64},
        "train": {
            "optimizer": "sgd",
            "lr": 0.01,
            "momentum": 0.0,
            "batch_size": 32,
            "local_epochs": 3,
        },
        "rounds": {"per_run": 30, "clients_per_round": 8, "min_fit_clients": 1, "seed": 42},
        "gate": {"min_accuracy": 0.7, "max_regression": 0.1},
    },  # fmt: skip
}


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"unknown configuration key {loc!r}"
    got = first.get("input")
    where = f"{loc}: " if loc else ""
    if isinstance(got, dict | list) or got is None or first["type"] == "value_error":
        return f"invalid configuration: {where}{msg}"
    return f"invalid configuration: {where}{msg} (got {got!r})"


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "params":
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build_config(data: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a `RunConfig`, turning pydantic errors into `ConfigError`."""
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None
    from fl.strategies import build_strategy  # strategies import this module

    build_strategy(config.strategy, clients_per_round=config.rounds.clients_per_round)
    return config


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return _deep_merge({"preset": name}, PRESETS[name])


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml, .yml) or TOML (.toml) file into a nested dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(
                f"config file {str(path)!r} must end in .yaml, .yml or .toml, not {path.suffix!r}"
            )
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        raise ConfigError(
            f"config file {str(path)!r} is not valid: {err}".splitlines()[0]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split `dotted.key=value`; the value is read as a YAML scalar (`0.1`, `true`, `null`)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    result = json.loads(json.dumps(data))
    for item in overrides:
        path, value = parse_override(item)
        if path == ["preset"]:
            raise ConfigError(f"override {item!r}: choose a preset with --preset, not --set")
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return result


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Preset (default `digits`), then the file's values, then `--set` overrides, validated."""
    if preset and config_file:
        raise ConfigError("give a preset or a config file, not both")
    if config_file:
        file_data = read_config_file(config_file)
        base = preset_dict(file_data.pop("preset")) if "preset" in file_data else {}
        data = _deep_merge(base, file_data)
    else:
        data = preset_dict(preset or "digits")
    return build_config(apply_overrides(data, overrides or []))
