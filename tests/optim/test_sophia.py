"""Sophia against the official SophiaG (sophia-opt), and its curvature estimators."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sophia_opt import SophiaG

from descent.optim import Sophia, gnb_loss, hutchinson
from tests.conftest import (
    assert_close_relative,
    gradient_stream,
    mlp_batches,
    random_tensors,
    small_mlp,
    two_groups,
)

STEPS = 50
K = 10
BS = 32


def run_on_stream(make_optimizer, tensors, grads, hessian_inputs, k=K, bs=BS):
    """Feed both optimizers the same gradients and, every k steps, the same GNB gradient."""
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    optimizer = make_optimizer(tensors)
    for step, (g, h) in enumerate(zip(grads, hessian_inputs), start=1):
        for t, gi in zip(tensors, g):
            t.grad = gi.clone()
        optimizer.step(bs=bs)
        if step % k == 0:
            for t, hi in zip(tensors, h):
                t.grad = hi.clone()
            optimizer.update_hessian()
    return [t.detach() for t in tensors], optimizer


@pytest.mark.parametrize("foreach", [False, True])
def test_sophia_equals_official_sophiag_on_random_tensors(foreach):
    tensors = random_tensors()
    grads = gradient_stream(tensors, STEPS, seed=1)
    hessian_inputs = gradient_stream(tensors, STEPS, seed=2)
    hyper = dict(lr=2e-3, betas=(0.965, 0.99), rho=0.04, weight_decay=0.1)
    ours, opt = run_on_stream(
        lambda t: Sophia(t, foreach=foreach, **hyper), tensors, grads, hessian_inputs
    )
    theirs, ref = run_on_stream(lambda t: SophiaG(t, **hyper), tensors, grads, hessian_inputs)
    for a, b, start in zip(ours, theirs, tensors):
        assert_close_relative(a, b, 1e-12)
        assert (a - start.detach()).abs().max() > 1e-3
    for p_ours, p_ref in zip(opt.param_groups[0]["params"], ref.param_groups[0]["params"]):
        assert torch.equal(opt.state[p_ours]["hessian"], ref.state[p_ref]["hessian"])
        assert float(opt.state[p_ours]["step"]) == float(ref.state[p_ref]["step"]) == STEPS


@pytest.mark.parametrize("foreach", [False, True])
def test_sophia_equals_official_sophiag_on_mlp_with_gnb_and_two_param_groups(foreach):
    """The real loop: GNB curvature from sampled labels every k steps, two groups."""

    def train(make_optimizer):
        model = small_mlp()
        optimizer = make_optimizer(two_groups(model, 1e-3, 0.2))
        generator = torch.Generator().manual_seed(7)
        batches = mlp_batches(STEPS + 1)
        for step, (x, y) in enumerate(batches[:-1], start=1):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step(bs=len(y))
            if step % K == 0:
                optimizer.zero_grad()
                gnb_loss(model(batches[step][0]), generator=generator).backward()
                optimizer.update_hessian()
        return model, optimizer

    ours, opt = train(lambda groups: Sophia(groups, lr=1e-3, rho=2.0, foreach=foreach))
    theirs, _ = train(lambda groups: SophiaG(groups, lr=1e-3, rho=2.0))
    for a, b, start in zip(ours.parameters(), theirs.parameters(), small_mlp().parameters()):
        assert_close_relative(a.detach(), b.detach(), 1e-12)
        assert (a - start).abs().max() > 1e-3
    # After 5 curvature refreshes part of the coordinates take Newton-like steps.
    assert 0.0 < opt.win_rate() < 1.0


def test_single_tensor_and_foreach_paths_are_bitwise_equal():
    tensors = random_tensors()
    grads = gradient_stream(tensors, STEPS, seed=1)
    hessians = gradient_stream(tensors, STEPS, seed=2)
    single, a = run_on_stream(lambda t: Sophia(t, lr=1e-2, foreach=False), tensors, grads, hessians)
    multi, b = run_on_stream(lambda t: Sophia(t, lr=1e-2, foreach=True), tensors, grads, hessians)
    for x, y in zip(single, multi):
        assert torch.equal(x, y)
    for sa, sb in zip(a.state.values(), b.state.values()):
        assert all(torch.equal(sa[key], sb[key]) for key in ("step", "exp_avg", "hessian"))


def test_first_k_steps_are_sign_steps():
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    optimizer = Sophia([x], lr=0.1, weight_decay=0.0, bs=8)
    x.grad = torch.tensor([1e-3, -2.0, 5.0, -1e-6], dtype=torch.float64)
    optimizer.step()
    assert x.detach().tolist() == [-0.1, 0.1, -0.1, 0.1]


def test_clipped_newton_step_matches_formula_once_curvature_is_known():
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = Sophia([x], lr=0.5, betas=(0.0, 0.0), rho=0.1, weight_decay=0.0, bs=10)
    x.grad = torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64)
    optimizer.update_hessian()  # h = g*g = [4, 9, 1] with beta2 = 0
    x.grad = torch.tensor([0.5, -20.0, 0.25], dtype=torch.float64)
    optimizer.step()
    # ratio = min(|m| / (rho*bs*h + eps), 1) = [0.5/4, 1 (clipped), 0.25/1]
    expected = [-0.5 * 0.5 / 4, 0.5, -0.5 * 0.25]
    assert x.detach().tolist() == pytest.approx(expected, rel=1e-14)
    assert optimizer.win_rate() == pytest.approx(2 / 3)


def test_negative_curvature_gives_the_sign_step():
    """Documented difference from the official code, whose ratio flips sign where h < 0."""
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = Sophia([x], lr=0.1, betas=(0.0, 0.0), weight_decay=0.0, bs=1)
    optimizer.update_hessian({x: torch.tensor([-5.0, 1e6], dtype=torch.float64)})
    x.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    optimizer.step()
    assert x.detach()[0].item() == -0.1
    assert x.detach()[1].item() == pytest.approx(-0.1 * 1.0 / (0.04 * 1e6))


def test_curvature_due_every_k_steps_and_survives_state_dict():
    x = torch.ones(3, requires_grad=True)
    optimizer = Sophia([x], k=3, bs=4)
    due = []
    for _ in range(7):
        x.grad = torch.ones(3)
        optimizer.step()
        due.append(optimizer.curvature_due)
    assert due == [False, False, True, False, False, True, False]
    restored = Sophia([x], k=3)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.steps_taken == 7 and restored.curvature_interval == 3
    x.grad = torch.ones(3)
    restored.step()  # bs=4 came back with the param group
    assert not restored.curvature_due
    x.grad = torch.ones(3)
    restored.step()
    assert restored.curvature_due


def test_step_without_bs_says_what_bs_means():
    x = torch.ones(2, requires_grad=True)
    optimizer = Sophia([x])
    x.grad = torch.ones(2)
    with pytest.raises(ValueError, match="number of predictions per step"):
        optimizer.step()


def test_parameters_without_grad_are_skipped():
    a, b = random_tensors()[:2]
    optimizer = Sophia([a, b], lr=0.1, bs=1)
    before = b.detach().clone()
    a.grad = torch.ones_like(a)
    optimizer.step()
    optimizer.update_hessian()
    assert torch.equal(b.detach(), before) and b not in optimizer.state


# -- curvature estimators ------------------------------------------------------------------


def quadratic(dim: int = 6, seed: int = 0):
    """0.5 x^T A x with a dense symmetric A: its Hessian is A, its diagonal known."""
    generator = torch.Generator().manual_seed(seed)
    root = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    matrix = root @ root.T / dim + torch.eye(dim, dtype=torch.float64)
    x = torch.randn(dim, generator=generator, dtype=torch.float64).requires_grad_(True)
    return matrix, x, lambda: 0.5 * x @ matrix @ x


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_mean_matches_the_hessian_diagonal(probe):
    matrix, x, loss = quadratic()
    generator = torch.Generator().manual_seed(3)
    probes = 4000
    samples = torch.stack(
        [hutchinson(loss(), [x], probe=probe, generator=generator)[x] for _ in range(probes)]
    )
    diagonal = matrix.diagonal()
    # Per-coordinate variance of u_i (A u)_i: sum_{j != i} A_ij^2 (+ 2 A_ii^2 for Gaussian u).
    off_diagonal = (matrix**2).sum(1) - diagonal**2
    variance = off_diagonal + (2 * diagonal**2 if probe == "gaussian" else 0)
    tolerance = 5 * torch.sqrt(variance / probes)  # five standard errors, fixed seed
    assert ((samples.mean(0) - diagonal).abs() <= tolerance).all()
    assert (samples.var(0) - variance).abs().max() < 0.2 * variance.max()


def test_rademacher_probes_draw_both_signs():
    """With u always -1 (a known bug elsewhere) u_i (A u)_i is the row sum, not the diagonal."""
    matrix, x, loss = quadratic(dim=8)
    generator = torch.Generator().manual_seed(5)
    estimates = torch.stack(
        [hutchinson(loss(), [x], probe="rademacher", generator=generator)[x] for _ in range(64)]
    )
    row_sums = matrix.sum(1)
    assert not torch.allclose(estimates, row_sums.expand_as(estimates))
    # u_i u_j takes both signs: each coordinate's estimate varies across probes.
    assert (estimates.std(0) > 0).all()


def test_rademacher_is_exact_on_a_diagonal_hessian():
    weights = torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64)
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    estimate = hutchinson((weights * x**2).sum(), [x], probe="rademacher")[x]
    assert torch.equal(estimate, 2 * weights)


def test_hutchinson_refuses_unknown_probe_and_unrelated_loss():
    x = torch.ones(2, requires_grad=True)
    y = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="probe"):
        hutchinson((x**2).sum(), [x], probe="uniform")
    with pytest.raises(ValueError, match="does not depend"):
        hutchinson((x**2).sum(), [y])


def test_gnb_estimate_matches_the_gauss_newton_diagonal_of_softmax_regression():
    """E[g_hat^2] over sampled labels is p(1 - p) x^2, the GN diagonal, for one example."""
    x = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    weight = torch.tensor(
        [[0.2, -0.1, 0.3], [0.0, 0.4, -0.2], [-0.3, 0.1, 0.1]], dtype=torch.float64
    ).requires_grad_(True)
    generator = torch.Generator().manual_seed(11)
    draws = 20000
    total = torch.zeros_like(weight)
    for _ in range(draws):
        (grad,) = torch.autograd.grad(gnb_loss(x @ weight.T, generator=generator), [weight])
        total += grad**2
    p = torch.softmax(x @ weight.T, dim=-1).detach()[0]
    expected = (p * (1 - p))[:, None] * x[0] ** 2
    # Each draw's g^2 lies in [0, x^2]; so its std is at most x^2 / 2.
    tolerance = 5 * (x[0] ** 2 / 2) / math.sqrt(draws)
    assert ((total / draws - expected).abs() <= tolerance).all()


def test_gnb_loss_samples_every_position_of_a_sequence_model():
    logits = torch.zeros(2, 5, 7, requires_grad=True)  # batch, positions, vocabulary
    loss = gnb_loss(logits, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(math.log(7))
    loss.backward()
    assert (logits.grad.abs().sum(-1) > 0).all()  # every position contributed


def test_gnb_loss_refuses_a_single_class():
    with pytest.raises(ValueError, match="classes"):
        gnb_loss(torch.zeros(4, 1))
