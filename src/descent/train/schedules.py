"""Learning-rate schedules: torch.optim.lr_scheduler's classes, and pure step -> multiplier maps.

:func:`build_scheduler` turns a :class:`~descent.train.TrainConfig` into a torch scheduler:
``step`` is ``StepLR``, ``cosine`` is ``CosineAnnealingLR``, ``cyclical`` is ``CyclicLR``
(triangular, triangular2, exp_range), ``one_cycle`` is ``OneCycleLR``; ``constant`` and
``warmup_cosine`` are ``LambdaLR`` over the pure functions below. The pure functions are also
the closed forms the tests pin torch's schedulers against.
"""

from __future__ import annotations

import functools
import math

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    CyclicLR,
    LambdaLR,
    LRScheduler,
    OneCycleLR,
    StepLR,
)

from descent.train.config import TrainConfig


def constant(step: int) -> float:
    """Multiplier 1 at every step."""
    return 1.0


def step_decay(step: int, every: int, factor: float) -> float:
    """Multiplier ``factor ** (step // every)``: times ``factor`` every ``every`` steps."""
    return factor ** (step // every)


def cosine(step: int, total_steps: int, min_ratio: float = 0.0) -> float:
    r"""Multiplier :math:`r + \tfrac12 (1 - r)(1 + \cos(\pi\,t / T))`, from 1 to ``min_ratio``."""
    progress = min(step, total_steps) / total_steps
    return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup over ``warmup_steps`` (from 1/(warmup+1) to 1), then cosine to ``min_ratio``.

    The warmup is nanoGPT's ``(t + 1) / (warmup + 1)``: never exactly zero, so step 0 moves.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return cosine(step - warmup_steps, max(1, total_steps - warmup_steps), min_ratio)


def cyclical(
    step: int, cycle_steps: int, max_ratio: float, mode: str = "triangular", gamma: float = 1.0
) -> float:
    """Smith's cyclical multiplier, between 1 and ``max_ratio``; one cycle is 2 * cycle_steps.

    ``triangular`` keeps the amplitude, ``triangular2`` halves it every cycle, ``exp_range``
    multiplies it by ``gamma ** step``.
    """
    cycle = math.floor(1 + step / (2 * cycle_steps))
    x = abs(step / cycle_steps - 2 * cycle + 1)
    scale = {"triangular": 1.0, "triangular2": 1 / (2.0 ** (cycle - 1)), "exp_range": gamma**step}
    if mode not in scale:
        raise ValueError(f"Invalid cyclical mode: {mode!r} (allowed: {', '.join(scale)})")
    return 1.0 + (max_ratio - 1.0) * max(0.0, 1.0 - x) * scale[mode]


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> LRScheduler:
    """The scheduler ``config.schedule`` names, over ``total_steps`` optimizer steps.

    Every param group's lr must already be ``config.lr``. The scheduler is stepped once per
    optimizer step; its state travels in checkpoints through ``state_dict``.
    """
    name = config.schedule
    if name == "constant":
        return LambdaLR(optimizer, constant)
    if name == "step":
        return StepLR(optimizer, step_size=config.decay_every, gamma=config.decay_factor)
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=config.min_lr)
    if name == "warmup_cosine":
        if config.warmup_steps >= total_steps:
            raise ValueError(
                f"Invalid warmup_steps: {config.warmup_steps} "
                f"(allowed: < the run's {total_steps} steps)"
            )
        min_ratio = config.min_lr / config.lr if config.lr > 0 else 0.0
        multiplier = functools.partial(
            warmup_cosine,
            warmup_steps=config.warmup_steps,
            total_steps=total_steps,
            min_ratio=min_ratio,
        )
        return LambdaLR(optimizer, multiplier)
    if name == "cyclical":
        return CyclicLR(
            optimizer,
            base_lr=config.lr,
            max_lr=config.max_lr,
            step_size_up=config.cycle_steps,
            mode=config.cyclical_mode,
            gamma=config.cycle_gamma,
            cycle_momentum=False,
        )
    if name == "one_cycle":
        return OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total_steps,
            pct_start=config.one_cycle_warmup_fraction,
            cycle_momentum=False,
        )
    raise ValueError(f"Invalid schedule: {name!r}")  # unreachable: TrainConfig checked it
