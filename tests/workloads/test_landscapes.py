"""The 2-D landscapes: their minima are where they say."""

from __future__ import annotations

import pytest
import torch

from descent.workloads.landscapes import LANDSCAPES, get_landscape


@pytest.mark.parametrize("name", [n for n, s in LANDSCAPES.items() if s.minima])
def test_every_listed_minimum_is_a_stationary_point_of_value_zero(name):
    surface = LANDSCAPES[name]
    for minimum in surface.minima:
        point = torch.tensor(minimum, dtype=torch.float64, requires_grad=True)
        value = surface(point)
        (gradient,) = torch.autograd.grad(value, point, create_graph=True)
        hessian = torch.stack(
            [torch.autograd.grad(gradient[i], point, retain_graph=True)[0] for i in range(2)]
        )
        assert value.item() == pytest.approx(0.0, abs=1e-20)
        assert gradient.abs().max().item() < 1e-10
        assert (torch.linalg.eigvalsh(hessian) > 0).all()  # a minimum, not a saddle


def test_the_saddle_has_no_minimum_and_says_so():
    surface = get_landscape("saddle")
    point = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(surface(point), point)
    assert gradient.abs().max() == 0
    with pytest.raises(ValueError, match="unbounded below"):
        surface.nearest_minimum((0.0, 0.0))


def test_ill_conditioned_quadratic_has_condition_number_100():
    surface = get_landscape("ill_conditioned")
    hessian = torch.autograd.functional.hessian(surface.fn, torch.zeros(2, dtype=torch.float64))
    eigenvalues = torch.linalg.eigvalsh(hessian)
    assert (eigenvalues[1] / eigenvalues[0]).item() == pytest.approx(100.0, rel=1e-12)
    assert abs(hessian[0, 1].item()) > 1  # rotated: not diagonal


def test_himmelblau_nearest_minimum_picks_the_right_one():
    minimum, distance = get_landscape("himmelblau").nearest_minimum((-3.0, -3.0))
    assert minimum == pytest.approx((-3.779310, -3.283186), abs=1e-6)
    assert distance == pytest.approx(((0.779310) ** 2 + (0.283186) ** 2) ** 0.5, rel=1e-5)


def test_functions_accept_batches_of_points():
    grid = torch.zeros(4, 5, 2, dtype=torch.float64)
    for surface in LANDSCAPES.values():
        assert surface(grid).shape == (4, 5)


def test_unknown_landscape_lists_the_names():
    with pytest.raises(ValueError, match="Unknown landscape 'sphere'; allowed: rosenbrock"):
        get_landscape("sphere")
