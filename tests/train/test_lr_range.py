"""The lr range test: a suggestion inside the stable range of a quadratic, the model untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from descent.train import TrainConfig, fit, lr_range_test, plot_lr_range
from tests.train.problems import (
    assert_bitwise_equal,
    classification,
    least_squares,
    linear_model,
    mlp,
    parameters_of,
    weights,
)


def test_on_least_squares_the_suggestion_is_stable_and_the_curve_stops_at_divergence():
    x, y, solution = least_squares()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    edge = 2.0 / torch.linalg.eigvalsh(2 * design.T @ design / len(x)).max().item()
    model = linear_model()
    before = weights(model)
    result = lr_range_test(model, (x, y), F.mse_loss, start_lr=1e-4, end_lr=10.0, steps=100)
    assert_bitwise_equal(weights(model), before)
    assert result.diverged and edge < result.lrs[-1] < 10.0
    ratios = result.lrs[1:] / result.lrs[:-1]
    np.testing.assert_allclose(ratios, (1e5) ** (1 / 99), rtol=1e-12)
    assert edge / 30 < result.suggested_lr < edge

    fit(model, (x, y), F.mse_loss, TrainConfig(lr=result.suggested_lr, steps=500, progress="none"))
    error = np.linalg.norm(parameters_of(model) - solution) / np.linalg.norm(solution)
    assert error < 1e-6


def test_with_adam_on_mini_batches_the_suggestion_trains_the_classifier():
    x, y = classification()
    config = TrainConfig(optimizer="adam", batch_size=16, steps=1, progress="none")
    result = lr_range_test(mlp(), (x, y), F.cross_entropy, config, start_lr=1e-5, end_lr=10.0)
    assert 1e-3 < result.suggested_lr < 1.0
    model = mlp()
    history = fit(
        model,
        (x, y),
        F.cross_entropy,
        TrainConfig(
            optimizer="adam", lr=result.suggested_lr, batch_size=16, epochs=20, progress="none"
        ),
    )
    assert history.losses[-1] < 0.5 * history.losses[0]


def test_sophia_gets_its_curvature_during_the_range_test():
    x, y = classification()
    config = TrainConfig(optimizer="sophia", hyperparameters={"k": 2}, steps=1, progress="none")
    result = lr_range_test(mlp(), (x, y), torch.nn.CrossEntropyLoss(), config, steps=20)
    assert len(result.lrs) >= 5 and np.isfinite(result.suggested_lr)


def test_the_plot_is_a_png(tmp_path):
    x, y, _ = least_squares()
    result = lr_range_test(linear_model(), (x, y), F.mse_loss, steps=30)
    out = plot_lr_range(result, tmp_path / "range.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_lr": 1.0, "end_lr": 0.1}, r"Invalid lr range: start_lr=1.0, end_lr=0.1"),
        ({"start_lr": 0.0}, r"Invalid lr range"),
        ({"steps": 3}, r"Invalid steps: 3 \(allowed: an integer >= 5\)"),
        ({"smoothing": 1.0}, r"Invalid smoothing: 1.0"),
        ({"diverge_factor": 1.0}, r"Invalid diverge_factor: 1.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    x, y, _ = least_squares()
    with pytest.raises(ValueError, match=message):
        lr_range_test(linear_model(), (x, y), F.mse_loss, **kwargs)
