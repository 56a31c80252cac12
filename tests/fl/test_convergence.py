"""End-to-end learning with the bare `fl` loop: sample, train, aggregate, evaluate (no Prefect).

As in the tutorial, where no round reaches its 0.7 promotion bar, nothing is promoted or rolled
back: each round simply starts from the previous aggregate.
"""

from __future__ import annotations

import time

import pytest

from fl.aggregation import aggregate_weighted_mean
from fl.config import RunConfig, load_config
from fl.data import load_federation
from fl.models import build_model, initial_weights
from fl.sampling import sample_clients
from fl.training import evaluate, train_cohort

TUTORIAL_FINAL_ACCURACY = 0.4767  # the tutorial's printed "Final accuracy" (seed 42)


def run_rounds(config: RunConfig) -> list[float]:
    """Holdout accuracy after each round."""
    seed = config.rounds.seed
    federation = load_federation(config.data, seed)
    model = build_model(config.model, federation.input_dim, federation.num_classes)
    weights = initial_weights(config.model, federation.input_dim, federation.num_classes, seed)
    accuracies = []
    for server_round in range(1, config.rounds.per_run + 1):
        sampled = sample_clients(
            federation.num_clients,
            config.rounds.clients_per_round,
            seed=seed,
            server_round=server_round,
        )
        updates = train_cohort(
            model,
            weights,
            [federation.client(c) for c in sampled],
            config.train,
            seed=seed,
            server_round=server_round,
        )
        weights = aggregate_weighted_mean(iter(updates), weights)
        evaluation = evaluate(
            model, weights, federation.holdout_x, federation.holdout_y, federation.num_classes
        )
        accuracies.append(evaluation.accuracy)
    return accuracies


@pytest.mark.slow
def test_tutorial_preset_matches_the_tutorials_final_accuracy() -> None:
    config = load_config(preset="tutorial")
    started = time.perf_counter()
    accuracies = run_rounds(config)
    assert len(accuracies) == 30
    assert abs(accuracies[-1] - TUTORIAL_FINAL_ACCURACY) <= 0.05, accuracies
    assert accuracies[-1] > accuracies[0] + 0.1  # it learned, slowly, as the tutorial does
    assert time.perf_counter() - started < 60


@pytest.mark.slow
def test_digits_preset_reaches_the_accuracy_target() -> None:
    config = load_config(preset="digits")
    started = time.perf_counter()
    accuracies = run_rounds(config)
    assert len(accuracies) == 30
    assert accuracies[-1] >= 0.92, accuracies
    assert time.perf_counter() - started < 60
