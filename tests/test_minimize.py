"""descent.minimize: gradient descent on a plain function."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from descent import minimize
from descent.workloads.landscapes import get_landscape


def test_plain_gradient_descent_follows_the_update_rule_exactly():
    """On f(x) = 0.5 a x^2, gradient descent gives x_t = (1 - lr a)^t x_0."""
    a, lr, steps = 3.0, 0.1, 20
    trajectory = minimize(lambda x: 0.5 * a * (x**2).sum(), [2.0, -1.0], "sgd", steps, lr=lr)
    factors = (1 - lr * a) ** np.arange(steps + 1)
    np.testing.assert_allclose(trajectory.path, factors[:, None] * [2.0, -1.0], rtol=1e-13)
    np.testing.assert_allclose(trajectory.losses, 0.5 * a * (trajectory.path**2).sum(1), rtol=1e-13)
    assert trajectory.path.shape == (steps + 1, 2) and trajectory.path.dtype == np.float64
    assert trajectory.loss == trajectory.losses[-1] and trajectory.diverged_at is None


def test_divergence_stops_the_run_and_says_when():
    surface = get_landscape("rosenbrock")
    trajectory = minimize(surface, surface.start, "sgd", 100, lr=1.0)
    assert trajectory.diverged_at is not None and trajectory.diverged_at < 100
    assert len(trajectory.path) == trajectory.diverged_at + 1
    assert not np.isfinite(trajectory.losses[-1])


def test_sophia_gets_curvature_and_takes_newton_like_steps():
    """Hutchinson curvature turns Sophia's clipped steps into Newton-like ones: it homes in,
    where sign steps of the same lr (Lion) hover at a distance set by the lr."""
    surface = get_landscape("ill_conditioned")
    sophia = minimize(surface, surface.start, "sophia", 1000, lr=0.05, rho=0.05, weight_decay=0)
    lion = minimize(surface, surface.start, "lion", 1000, lr=0.05)
    assert sophia.loss < 1e-12 and lion.loss > 1e-2


def test_the_saddle_is_escaped_from_a_nudge():
    surface = get_landscape("saddle")
    trajectory = minimize(surface, (1.0, 1e-3), "sgd", 60, lr=0.1)
    assert abs(trajectory.x[0]) < 1e-5 and abs(trajectory.x[1]) > 1.0
    assert trajectory.loss < -1.0


def test_bad_start_or_function_is_refused():
    with pytest.raises(ValueError, match="x0 must be finite"):
        minimize(lambda x: (x**2).sum(), [float("nan"), 0.0])
    with pytest.raises(ValueError, match="non-empty vector"):
        minimize(lambda x: (x**2).sum(), [[1.0, 2.0]])
    with pytest.raises(TypeError, match="scalar tensor"):
        minimize(lambda x: x**2, [1.0, 2.0], steps=1)
    with pytest.raises(ValueError, match=r"Invalid steps: -3 \(allowed: an integer >= 0\)"):
        minimize(lambda x: (x**2).sum(), [1.0], steps=-3)
    assert len(minimize(lambda x: (x**2).sum(), [1.0], steps=0).path) == 1


def test_float32_and_seeded_curvature_are_reproducible():
    surface = get_landscape("rosenbrock")
    runs = [minimize(surface, surface.start, "sophia", 50, lr=0.1, rho=0.1, seed=3) for _ in "ab"]
    assert np.array_equal(runs[0].path, runs[1].path)
    single = minimize(surface, surface.start, "adam", 10, lr=0.01, dtype=torch.float32)
    assert single.path.dtype == np.float32
