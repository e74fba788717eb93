"""The divergence guard: rollback, lr cut and recovery; a NaN batch survived; a clear stop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from descent.train import DivergenceError, TrainConfig, fit
from descent.train.guard import DivergenceGuard
from tests.train.problems import least_squares, linear_model, parameters_of


def _relative_error(model, solution):
    return float(np.linalg.norm(parameters_of(model) - solution) / np.linalg.norm(solution))


def test_too_large_an_lr_on_a_quadratic_is_rolled_back_cut_and_then_converges(tmp_path):
    x, y, solution = least_squares()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    largest = torch.linalg.eigvalsh(2 * design.T @ design / len(x)).max().item()
    lr = 6.0 / largest  # 3x the largest stable step 2 / L: diverges, and so does half of it
    config = TrainConfig(
        lr=lr,
        steps=600,
        guard_loss_factor=10.0,
        log_every=50,
        run_dir=str(tmp_path),
        progress="none",
    )
    model = linear_model()
    history = fit(model, (x, y), F.mse_loss, config)
    assert len(history.rollbacks) >= 2
    scales = [r["lr_scale"] for r in history.rollbacks]
    assert scales == [0.5 ** (i + 1) for i in range(len(scales))]
    assert all("running minimum" in r["reason"] for r in history.rollbacks)
    assert history.records[-1]["lr"] == pytest.approx(lr * scales[-1])
    assert lr * scales[-1] < 2.0 / largest
    assert _relative_error(model, solution) < 1e-6
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len([line for line in lines if line["kind"] == "rollback"]) == len(history.rollbacks)


def _nan_on_calls(calls):
    count = {"n": 0}

    def loss_fn(outputs, targets):
        count["n"] += 1
        loss = F.mse_loss(outputs, targets)
        return loss * math.nan if count["n"] in calls else loss

    return loss_fn


def test_a_nan_in_one_batch_loss_is_survived_and_logged(tmp_path, capsys):
    x, y, solution = least_squares()
    model = linear_model()
    config = TrainConfig(lr=0.3, steps=400, run_dir=str(tmp_path), progress="none")
    history = fit(model, (x, y), _nan_on_calls({7}), config)
    assert history.rollbacks == [
        {"step": 7, "reason": "non-finite loss (nan)", "restored_step": 0, "lr_scale": 0.5}
    ]
    assert _relative_error(model, solution) < 1e-6
    assert "divergence at step 7: non-finite loss (nan)" in capsys.readouterr().err
    rollback_lines = [
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if '"rollback"' in line
    ]
    assert [line["step"] for line in rollback_lines] == [7]


def test_endless_divergence_stops_with_a_clear_error():
    x, y, _ = least_squares()
    config = TrainConfig(lr=0.3, steps=100, guard_max_rollbacks=3, progress="none")
    with pytest.raises(DivergenceError, match=r"diverged 4 times in a row \(last: non-finite loss"):
        fit(linear_model(), (x, y), _nan_on_calls(set(range(5, 1000))), config)


def test_divergence_before_any_good_step_says_so():
    x, y, _ = least_squares()
    config = TrainConfig(lr=0.3, steps=10, progress="none")
    with pytest.raises(DivergenceError, match="diverged before any good step"):
        fit(linear_model(), (x, y), _nan_on_calls(set(range(1, 100))), config)


def test_the_guard_names_each_reason():
    guard = DivergenceGuard(loss_factor=3.0)
    assert guard.check(1.0, 1.0) is None
    guard.running_min = 1.0
    assert guard.check(math.inf, 1.0) == "non-finite loss (inf)"
    assert guard.check(1.0, math.nan) == "non-finite gradient norm (nan)"
    assert guard.check(3.5, 1.0) == "loss 3.5 above 3 x its running minimum 1"
    assert guard.check(2.9, 1.0) is None


def test_a_rollback_restores_model_and_optimizer_state_exactly():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    guard = DivergenceGuard(snapshot_every=1)
    guard.accept(0, 1.0, model, optimizer)
    saved_weight = model.weight.detach().clone()
    saved_moment = optimizer.state[model.weight]["exp_avg"].clone()
    for _ in range(3):
        optimizer.step()
    assert not torch.equal(model.weight, saved_weight)
    assert guard.rollback(model, optimizer, "test") == 0
    assert torch.equal(model.weight, saved_weight)
    assert torch.equal(optimizer.state[model.weight]["exp_avg"], saved_moment)
    optimizer.step()  # the restored state is a copy: the snapshot is not mutated
    guard.rollback(model, optimizer, "test")
    assert torch.equal(model.weight, saved_weight)
    assert guard.lr_scale == 0.25


class _InfiniteGradientOnce(torch.autograd.Function):
    """Identity forward; on the chosen backward call the gradient becomes inf."""

    calls = 0
    at = 7

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        _InfiniteGradientOnce.calls += 1
        return grad * math.inf if _InfiniteGradientOnce.calls == _InfiniteGradientOnce.at else grad


@pytest.mark.parametrize(
    ("clip_threshold", "expected"),
    [
        # clipping by norm measures the norm at every step: caught before the update
        (1e6, [{"step": 7, "reason": "non-finite gradient norm (nan)", "restored_step": 0}]),
        # otherwise the inf weights it leaves make the next loss non-finite
        (None, [{"step": 8, "reason": "non-finite loss (nan)", "restored_step": 0}]),
    ],
)
def test_an_infinite_gradient_with_a_finite_loss_is_rolled_back(clip_threshold, expected):
    _InfiniteGradientOnce.calls = 0
    x, y, solution = least_squares()

    def loss_fn(outputs, targets):
        return F.mse_loss(_InfiniteGradientOnce.apply(outputs), targets)

    model = linear_model()
    config = TrainConfig(lr=0.3, steps=400, clip_threshold=clip_threshold, progress="none")
    history = fit(model, (x, y), loss_fn, config)
    assert [{k: r[k] for k in ("step", "reason", "restored_step")} for r in history.rollbacks] == (
        expected
    )
    assert _relative_error(model, solution) < 1e-6


def test_a_snapshot_is_never_taken_of_non_finite_weights():
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = DivergenceGuard(snapshot_every=5)
    assert guard.accept(0, 1.0, model, optimizer) is None
    with torch.no_grad():
        model.weight[0, 0] = math.inf
    assert guard.accept(3, 1.0, model, optimizer) is None  # no snapshot due: not looked at
    assert guard.accept(5, 1.0, model, optimizer) == "non-finite weights"
    guard.rollback(model, optimizer, "non-finite weights")
    assert torch.isfinite(model.weight).all()
