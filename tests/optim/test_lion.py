"""Lion against its formula and against lion-pytorch, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lion_pytorch import Lion as ReferenceLion

from descent.optim import Lion
from tests.conftest import (
    assert_close_relative,
    gradient_stream,
    mlp_batches,
    random_tensors,
    small_mlp,
    two_groups,
)

STEPS = 50


def formula_lion(params, grad_stream, lr, betas, weight_decay):
    """The spec's update, written out on plain tensors."""
    params = [p.detach().clone() for p in params]
    momenta = [torch.zeros_like(p) for p in params]
    beta1, beta2 = betas
    for grads in grad_stream:
        for i, (p, g) in enumerate(zip(params, grads)):
            p = p * (1 - lr * weight_decay)
            c = beta1 * momenta[i] + (1 - beta1) * g
            params[i] = p - lr * torch.sign(c)
            momenta[i] = beta2 * momenta[i] + (1 - beta2) * g
    return params


def run_on_stream(optimizer_cls, tensors, grad_stream, **kwargs):
    tensors = [t.detach().clone().requires_grad_(True) for t in tensors]
    optimizer = optimizer_cls(tensors, **kwargs)
    for grads in grad_stream:
        for t, g in zip(tensors, grads):
            t.grad = g.clone()
        optimizer.step()
    return [t.detach() for t in tensors], optimizer


@pytest.mark.parametrize("foreach", [False, True])
def test_lion_equals_formula_and_lion_pytorch_on_random_tensors(foreach):
    tensors = random_tensors()
    stream = gradient_stream(tensors, STEPS)
    hyper = dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.3)
    ours, _ = run_on_stream(Lion, tensors, stream, foreach=foreach, **hyper)
    reference, _ = run_on_stream(ReferenceLion, tensors, stream, **hyper)
    formula = formula_lion(tensors, stream, **hyper)
    for a, b, c, start in zip(ours, reference, formula, tensors):
        assert a.dtype == torch.float64
        assert_close_relative(a, b, 1e-12)
        assert_close_relative(a, c, 1e-12)
        assert (a - start.detach()).abs().max() > 1e-2  # 50 steps of lr 3e-3 moved it


def train_mlp(optimizer_factory, steps=STEPS):
    model = small_mlp()
    optimizer = optimizer_factory(model)
    for x, y in mlp_batches(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("foreach", [False, True])
def test_lion_equals_lion_pytorch_on_mlp_with_two_param_groups(foreach):
    ours = train_mlp(lambda m: Lion(two_groups(m, 1e-3, 0.5), lr=1e-3, foreach=foreach))
    reference = train_mlp(lambda m: ReferenceLion(two_groups(m, 1e-3, 0.5), lr=1e-3))
    start = small_mlp()
    for a, b, s in zip(ours.parameters(), reference.parameters(), start.parameters()):
        assert_close_relative(a.detach(), b.detach(), 1e-12)
        assert (a - s).abs().max() > 1e-3  # 50 steps of lr 1e-3 moved every tensor


def test_single_tensor_and_foreach_paths_are_bitwise_equal():
    tensors = random_tensors()
    stream = gradient_stream(tensors, STEPS)
    single, opt_single = run_on_stream(Lion, tensors, stream, lr=1e-2, weight_decay=0.1)
    multi, opt_multi = run_on_stream(Lion, tensors, stream, lr=1e-2, weight_decay=0.1, foreach=True)
    for a, b in zip(single, multi):
        assert torch.equal(a, b)
    for sa, sb in zip(opt_single.state.values(), opt_multi.state.values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])


def test_lion_keeps_one_state_tensor_per_parameter():
    tensors = random_tensors()
    _, optimizer = run_on_stream(Lion, tensors, gradient_stream(tensors, 2), lr=1e-3)
    for p in optimizer.param_groups[0]["params"]:
        assert set(optimizer.state[p]) == {"exp_avg"}
        assert optimizer.state[p]["exp_avg"].shape == p.shape


def test_sign_of_zero_momentum_is_a_zero_step():
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = Lion([x], lr=1.0)
    x.grad = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    optimizer.step()
    assert x.detach().tolist() == [0.0, -1.0, 1.0]


def test_parameters_without_grad_are_skipped():
    a, b = random_tensors()[:2]
    optimizer = Lion([a, b], lr=0.1)
    before = b.detach().clone()
    a.grad = torch.ones_like(a)
    optimizer.step()
    assert torch.equal(b.detach(), before) and b not in optimizer.state


def test_lion_pytorch_decoupled_mode_is_not_the_reference():
    """lucidrains' decoupled_weight_decay=True divides wd by the initial lr; descent does not."""
    tensors = random_tensors()
    stream = gradient_stream(tensors, 5)
    ours, _ = run_on_stream(Lion, tensors, stream, lr=1e-2, weight_decay=0.5)
    theirs, _ = run_on_stream(
        ReferenceLion, tensors, stream, lr=1e-2, weight_decay=0.5, decoupled_weight_decay=True
    )
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(ours, theirs))


def test_deepcopy_and_zero_grad_work_like_torch_optimizers():
    model = small_mlp()
    optimizer = Lion(model.parameters(), lr=1e-3)
    clone = copy.deepcopy(optimizer)
    assert clone.param_groups[0]["lr"] == 1e-3
    model(torch.randn(2, 6, dtype=torch.float64)).sum().backward()
    optimizer.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


def test_torch_lr_scheduler_drives_the_step_size():
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = Lion([x], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    moves = []
    for _ in range(4):
        before = x.detach().clone()
        x.grad = torch.tensor([1.0, -1.0], dtype=torch.float64)
        optimizer.step()
        scheduler.step()
        moves.append((x.detach() - before).tolist())
    expected = [[-0.1, 0.1], [-0.05, 0.05], [-0.025, 0.025], [-0.0125, 0.0125]]
    assert moves == [pytest.approx(row, rel=1e-12) for row in expected]  # x - before rounds
