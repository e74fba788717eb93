"""Schedules: torch's scheduler classes pinned against closed forms, inside and outside fit()."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from descent.train import TrainConfig, fit
from descent.train.schedules import (
    build_scheduler,
    constant,
    cosine,
    cyclical,
    step_decay,
    warmup_cosine,
)
from tests.train.problems import least_squares, linear_model

LR, STEPS = 0.1, 40


def _lrs(config: TrainConfig, steps: int = STEPS) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


def _config(**fields) -> TrainConfig:
    return TrainConfig(lr=LR, steps=STEPS, **fields)


@pytest.mark.parametrize(
    ("fields", "closed_form"),
    [
        ({}, constant),
        (
            {"schedule": "step", "decay_every": 7, "decay_factor": 0.3},
            lambda t: step_decay(t, 7, 0.3),
        ),
        ({"schedule": "cosine", "min_lr": 0.01}, lambda t: cosine(t, STEPS, 0.1)),
        (
            {"schedule": "warmup_cosine", "warmup_steps": 5, "min_lr": 0.01},
            lambda t: warmup_cosine(t, 5, STEPS, 0.1),
        ),
        (
            {"schedule": "cyclical", "max_lr": 0.5, "cycle_steps": 6},
            lambda t: cyclical(t, 6, 5.0, "triangular"),
        ),
        (
            {
                "schedule": "cyclical",
                "max_lr": 0.5,
                "cycle_steps": 6,
                "cyclical_mode": "triangular2",
            },
            lambda t: cyclical(t, 6, 5.0, "triangular2"),
        ),
        (
            {
                "schedule": "cyclical",
                "max_lr": 0.5,
                "cycle_steps": 6,
                "cyclical_mode": "exp_range",
                "cycle_gamma": 0.97,
            },
            lambda t: cyclical(t, 6, 5.0, "exp_range", 0.97),
        ),
    ],
    ids=["constant", "step", "cosine", "warmup_cosine", "triangular", "triangular2", "exp_range"],
)
def test_torch_schedulers_follow_the_closed_forms(fields, closed_form):
    expected = [LR * closed_form(t) for t in range(STEPS)]
    assert _lrs(_config(**fields)) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_closed_forms_at_their_landmarks():
    assert warmup_cosine(0, 9, 100) == 0.1  # nanoGPT's (t + 1) / (warmup + 1): never 0
    assert warmup_cosine(9, 9, 100) == 1.0
    assert warmup_cosine(100, 9, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert cosine(50, 100) == pytest.approx(0.5)
    assert [cyclical(t, 2, 3.0) for t in range(5)] == [1.0, 2.0, 3.0, 2.0, 1.0]
    assert cyclical(6, 2, 3.0, "triangular2") == 2.0  # second cycle: half the amplitude
    assert step_decay(9, 3, 0.5) == 0.125


def test_one_cycle_rises_to_lr_then_anneals_far_below():
    # torch puts the peak at step fraction * steps - 1 and the floor at the last step
    lrs = _lrs(_config(schedule="one_cycle", one_cycle_warmup_fraction=0.25), steps=40)
    assert lrs[0] == pytest.approx(LR / 25)
    assert max(lrs) == pytest.approx(LR) and lrs.index(max(lrs)) == 9
    assert lrs[-1] == pytest.approx(LR / 25 / 1e4)


def test_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ValueError, match=r"Invalid warmup_steps: 40 \(allowed: < the run's 40"):
        _lrs(_config(schedule="warmup_cosine", warmup_steps=40))


@pytest.mark.parametrize(
    "fields",
    [
        {"schedule": "step", "decay_every": 3},
        {"schedule": "cosine"},
        {"schedule": "warmup_cosine", "warmup_steps": 4},
        {"schedule": "cyclical", "max_lr": 1.0, "cycle_steps": 4, "cyclical_mode": "triangular2"},
        {"schedule": "one_cycle"},
    ],
    ids=lambda fields: fields["schedule"],
)
def test_scheduler_state_survives_a_checkpoint_round_trip(fields):
    config = _config(**fields)
    expected = _lrs(config)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    scheduler = build_scheduler(optimizer, config, STEPS)
    lrs = []
    for _ in range(13):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    scheduler = build_scheduler(optimizer, config, STEPS)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    for _ in range(STEPS - 13):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == expected


def test_fit_applies_the_schedule_value_of_each_step_before_the_step():
    x, y, _ = least_squares()
    config = TrainConfig(
        lr=LR,
        steps=20,
        schedule="warmup_cosine",
        warmup_steps=4,
        log_every=1,
        progress="none",
    )
    history = fit(linear_model(), (x, y), F.mse_loss, config)
    expected = [LR * warmup_cosine(t, 4, 20) for t in range(20)]
    assert history.column("lr").tolist() == pytest.approx(expected, rel=1e-12)
    assert not math.isclose(history.records[-1]["lr"], 0.0)
