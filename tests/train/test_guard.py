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
