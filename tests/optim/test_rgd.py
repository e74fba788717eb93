"""RGD re-weighting against its closed form."""

from __future__ import annotations

import math

import pytest
import torch

from descent.optim import rgd_loss, rgd_weights


def test_weights_follow_the_clipped_exponential():
    losses = torch.tensor([0.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    expected = [math.exp(0.0), math.exp(0.5 / 2), math.exp(1.0 / 2), math.exp(1.0 / 2)]
    assert rgd_weights(losses).tolist() == pytest.approx(expected, rel=1e-15)
    # tau and the temperature are parameters
    assert rgd_weights(losses, tau=2.0).tolist() == pytest.approx(
        [1.0, math.exp(0.5 / 3), math.exp(1.0 / 3), math.exp(2.0 / 3)], rel=1e-15
    )
    assert rgd_weights(losses, tau=2.0, temperature=1.0)[3].item() == pytest.approx(math.exp(2.0))


def test_loss_is_the_unnormalised_weighted_mean_and_weights_carry_no_gradient():
    losses = torch.tensor([0.2, 2.0, 0.7], dtype=torch.float64, requires_grad=True)
    loss = rgd_loss(losses, tau=1.0)
    w = [math.exp(0.2 / 2), math.exp(1.0 / 2), math.exp(0.7 / 2)]
    assert loss.item() == pytest.approx(sum(wi * li for wi, li in zip(w, [0.2, 2.0, 0.7])) / 3)
    loss.backward()
    assert losses.grad.tolist() == pytest.approx([wi / 3 for wi in w], rel=1e-15)


def test_rgd_needs_per_example_losses():
    with pytest.raises(ValueError, match="reduction='none'"):
        rgd_loss(torch.tensor(1.0))
    with pytest.raises(ValueError, match="Invalid tau: 0"):
        rgd_loss(torch.ones(3), tau=0)
    with pytest.raises(TypeError, match="must be a tensor"):
        rgd_loss([1.0, 2.0])
