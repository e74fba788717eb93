"""A non-zero initial second moment in torch's own Adam/AdamW."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from descent.optim import init_second_moment
from tests.conftest import mlp_batches, small_mlp


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_first_step_has_the_size_the_formula_predicts(cls, fused):
    torch.manual_seed(0)
    layer = nn.Linear(5, 4).double()
    lr, beta2, eps, scale = 1e-2, 0.999, 1e-8, 3.0
    optimizer = cls(
        layer.parameters(), lr=lr, betas=(0.9, beta2), eps=eps, weight_decay=0.0, fused=fused
    )
    init_second_moment(
        optimizer, layer, "random", scale, generator=torch.Generator().manual_seed(4)
    )
    v0 = optimizer.state[layer.weight]["exp_avg_sq"].clone()
    assert torch.equal(
        optimizer.state[layer.bias]["exp_avg_sq"], torch.zeros(4, dtype=torch.float64)
    )

    before = [p.detach().clone() for p in layer.parameters()]
    x = torch.randn(8, 5, dtype=torch.float64)
    layer(x).pow(2).mean().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    optimizer.step()

    # Bias correction unchanged: v_hat = beta2 v0 / (1 - beta2) + g^2, m_hat = g.
    weight_grad = grads[0]
    v_hat = beta2 * v0 / (1 - beta2) + weight_grad**2
    expected_weight = before[0] - lr * weight_grad / (v_hat.sqrt() + eps)
    torch.testing.assert_close(layer.weight.detach(), expected_weight, rtol=1e-12, atol=1e-15)
    # Not the sign step of v0 = 0 ...
    step = (layer.weight.detach() - before[0]).abs()
    assert (step < 0.9 * lr).all()
    # ... which the bias, left at v0 = 0, still takes.
    torch.testing.assert_close(
        (layer.bias.detach() - before[1]).abs(),
        torch.full((4,), lr, dtype=torch.float64),
        rtol=1e-6,
        atol=0,
    )


def test_random_v0_is_xavier_normal_squared():
    layer = nn.Linear(300, 200)
    optimizer = torch.optim.Adam(layer.parameters())
    init_second_moment(
        optimizer, layer, "random", 100.0, generator=torch.Generator().manual_seed(0)
    )
    v0 = optimizer.state[layer.weight]["exp_avg_sq"]
    # E[x^2] = 2 / (fan_in + fan_out) for Xavier-normal x.
    assert v0.mean().item() == pytest.approx(100.0 * 2 / 500, rel=0.02)
    assert (v0 >= 0).all()


def test_data_v0_is_the_squared_mean_gradient():
    model = small_mlp()
    batches = mlp_batches(4)
    optimizer = torch.optim.AdamW(model.parameters())
    init_second_moment(
        optimizer, model, "data", 2.0, data=batches, loss_fn=F.cross_entropy, examples=48
    )  # three batches of 16
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for x, y in batches[:3]:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        for total, g in zip(expected, grads):
            total += g / 3
    for p, mean in zip(model.parameters(), expected):
        torch.testing.assert_close(
            optimizer.state[p]["exp_avg_sq"], 2.0 * mean**2, rtol=1e-12, atol=0
        )
        assert p.grad is None  # the user's gradients are left as they were


def test_data_v0_with_variance_adds_batch_times_variance():
    model = small_mlp()
    batches = mlp_batches(2)
    optimizer = torch.optim.Adam(model.parameters())
    init_second_moment(
        optimizer, model, "data", data=batches, loss_fn=F.cross_entropy, variance=True
    )
    grads = [
        torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
        for x, y in batches
    ]
    for i, p in enumerate(model.parameters()):
        stacked = torch.stack([g[i] for g in grads])
        mean = stacked.mean(0)
        variance = (stacked**2).mean(0) - mean**2
        torch.testing.assert_close(
            optimizer.state[p]["exp_avg_sq"],
            mean**2 + 16 * variance.clamp(min=0),
            rtol=1e-10,
            atol=1e-18,
        )


def test_refusals_name_the_problem():
    layer = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"needs a torch\.optim\.Adam or AdamW, got SGD"):
        init_second_moment(torch.optim.SGD(layer.parameters(), lr=0.1), layer)
    adam = torch.optim.Adam(layer.parameters())
    with pytest.raises(ValueError, match="Invalid method: 'zeros'"):
        init_second_moment(adam, layer, "zeros")
    with pytest.raises(ValueError, match="Invalid scale: -1"):
        init_second_moment(adam, layer, scale=-1.0)
    with pytest.raises(ValueError, match="does not hold"):
        init_second_moment(adam, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs the model"):
        init_second_moment(adam, layer, "data")
    layer(torch.ones(1, 2)).sum().backward()
    adam.step()
    with pytest.raises(ValueError, match=r"before the optimizer's first step \(it has taken 1\)"):
        init_second_moment(adam, layer)


def test_filling_again_before_the_first_step_replaces_v0():
    layer = nn.Linear(3, 2)
    adam = torch.optim.Adam(layer.parameters())
    init_second_moment(adam, layer, "random", 1.0, generator=torch.Generator().manual_seed(0))
    init_second_moment(adam, layer, "random", 4.0, generator=torch.Generator().manual_seed(0))
    expected = torch.empty(2, 3)
    nn.init.xavier_normal_(expected, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(adam.state[layer.weight]["exp_avg_sq"], 4.0 * expected**2)
