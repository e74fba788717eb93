"""The learning-rate range test (Smith 2017): raise the lr exponentially, watch the loss.

One short run in which step ``i`` uses
:math:`\\eta_i = \\eta_0 (\\eta_1 / \\eta_0)^{i / (n - 1)}`. The loss is smoothed by a
bias-corrected exponential average; the test stops when the smoothed loss exceeds
``diverge_factor`` times its minimum. The suggestion is the lr where the smoothed loss falls
fastest against log lr, between the first tenth of the curve and its minimum: large enough
to learn quickly, below the edge.

References:
    Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017, arXiv:1506.01186.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from descent.figures import pyplot, save_figure
from descent.train.config import TrainConfig
from descent.train.loop import LossFn, _Run


@dataclass(frozen=True)
class LRRangeResult:
    """The curve of an lr range test.

    Attributes:
        lrs: the lr of each step taken.
        losses: the smoothed loss at each step.
        raw_losses: the loss of each step's batch.
        suggested_lr: where the smoothed loss falls fastest (per unit of log lr).
        diverged: True when the test stopped because the loss blew up.
    """

    lrs: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    suggested_lr: float
    diverged: bool


def lr_range_test(
    model: nn.Module,
    train_data: Any,
    loss_fn: LossFn,
    config: TrainConfig | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
) -> LRRangeResult:
    """Run the range test and leave ``model`` as it was.

    Args:
        model, train_data, loss_fn: as for :func:`~descent.train.fit`.
        config: optimizer, hyperparameters, batch_size, seed, device... (its lr, schedule,
            steps and guard are ignored); default: SGD, batch gradient descent.
        start_lr, end_lr: the range, ``0 < start_lr < end_lr``.
        steps: steps from ``start_lr`` to ``end_lr`` (>= 5).
        smoothing: the average's :math:`\\beta` in [0, 1).
        diverge_factor: stop when the smoothed loss exceeds this times its minimum (> 1).
    """
    if not (isinstance(start_lr, (int, float)) and isinstance(end_lr, (int, float))):
        raise TypeError("start_lr and end_lr must be numbers")
    if not 0 < start_lr < end_lr < math.inf:
        raise ValueError(
            f"Invalid lr range: start_lr={start_lr}, end_lr={end_lr} "
            "(allowed: 0 < start_lr < end_lr < inf)"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 5:
        raise ValueError(f"Invalid steps: {steps!r} (allowed: an integer >= 5)")
    if not 0 <= smoothing < 1:
        raise ValueError(f"Invalid smoothing: {smoothing} (allowed: 0 <= smoothing < 1)")
    if not diverge_factor > 1:
        raise ValueError(f"Invalid diverge_factor: {diverge_factor} (allowed: > 1)")
    base = config if config is not None else TrainConfig(steps=steps)
    if not isinstance(base, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(base).__name__}")
    config = dataclasses.replace(
        base,
        lr=start_lr,
        steps=steps,
        epochs=None,
        schedule="constant",
        guard=False,
        restarts=1,
        early_stopping_patience=None,
        eval_every=None,
        checkpoint_every=None,
        run_dir=None,
        tensorboard=False,
        progress="none",
    )
    saved = copy.deepcopy(model.state_dict())
    run = _Run(model, train_data, loss_fn, config, None, {}, [])
    torch.manual_seed(config.seed)
    lrs = start_lr * (end_lr / start_lr) ** (np.arange(steps) / (steps - 1))
    raw, smoothed = [], []
    average, best, diverged = 0.0, math.inf, False
    try:
        model.train()
        for index, lr in enumerate(lrs):
            for group in run.optimizer.param_groups:
                group["lr"] = float(lr)
            loss, predictions, _ = run._forward_backward()
            run._clip(measure=False)
            value = loss.item()
            if run.step_takes_bs:
                run.optimizer.step(bs=predictions)
            else:
                run.optimizer.step()
            if getattr(run.optimizer, "curvature_due", False):
                run._refresh_curvature()
            run.optimizer.zero_grad(set_to_none=True)
            average = smoothing * average + (1 - smoothing) * value
            current = average / (1 - smoothing ** (index + 1))
            raw.append(value)
            smoothed.append(current)
            if not math.isfinite(current) or current > diverge_factor * best:
                diverged = True
                break
            best = min(best, current)
    finally:
        model.load_state_dict(saved)
    taken = lrs[: len(smoothed)]
    return LRRangeResult(
        lrs=taken,
        losses=np.array(smoothed),
        raw_losses=np.array(raw),
        suggested_lr=_suggest(taken, np.array(smoothed)),
        diverged=diverged,
    )


def _suggest(lrs: np.ndarray, losses: np.ndarray) -> float:
    finite = np.isfinite(losses)
    lrs, losses = lrs[finite], losses[finite]
    if len(losses) < 3:
        return float(lrs[0]) if len(lrs) else math.nan
    # The first tenth is skipped: there the average rests on few batches and is mostly noise.
    skip = max(1, len(losses) // 10)
    lowest = int(np.argmin(losses))
    if lowest - skip < 2:
        return float(lrs[lowest])
    # The slope is measured across a tenth of the sweep, not between neighbours: batch noise
    # makes neighbour-to-neighbour slopes steepest wherever the loss happens to wiggle.
    width = min(max(2, len(losses) // 10), lowest - skip)
    starts = np.arange(skip, lowest - width + 1)
    log_lrs = np.log(lrs)
    slopes = (losses[starts + width] - losses[starts]) / (log_lrs[starts + width] - log_lrs[starts])
    best = int(starts[np.argmin(slopes)])
    return float(np.exp((log_lrs[best] + log_lrs[best + width]) / 2))


def plot_lr_range(result: LRRangeResult, out: str | Path) -> Path:
    """Draw the smoothed loss against the lr (log scale), the suggestion marked, to a PNG."""
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(result.lrs, result.raw_losses, alpha=0.3, label="batch loss")
    axis.plot(result.lrs, result.losses, label="smoothed loss")
    axis.axvline(result.suggested_lr, color="red", linestyle="--", label="suggested lr")
    axis.set_xscale("log")
    # Past the edge the loss explodes; show the part of the curve that decides the lr.
    finite = result.losses[np.isfinite(result.losses)]
    if len(finite):
        lowest = int(finite.argmin())
        low, high = float(finite[lowest]), float(finite[: lowest + 1].max())
        axis.set_ylim(low - 0.05 * (high - low), high + 0.1 * (high - low) + 1e-12)
    axis.set_xlabel("learning rate")
    axis.set_ylabel("loss")
    axis.set_title(f"lr range test: suggested lr {result.suggested_lr:.3g}")
    axis.legend()
    figure.tight_layout()
    out = Path(out)
    return save_figure(figure, out, dpi=100)
