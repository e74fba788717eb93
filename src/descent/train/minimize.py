"""Gradient descent on a plain function of a vector: the update rule with nothing around it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from descent.devices import resolve_device
from descent.optim import create_optimizer, hutchinson


@dataclass(frozen=True)
class Trajectory:
    """The result of :func:`minimize`.

    Attributes:
        path: points visited, shape ``(steps_done + 1, dim)``, the start first.
        losses: the function at each point of ``path``.
        diverged_at: the step at which the value or the point stopped being finite, else None.
    """

    path: np.ndarray
    losses: np.ndarray
    diverged_at: int | None = None

    @property
    def x(self) -> np.ndarray:
        """The last point."""
        return self.path[-1]

    @property
    def loss(self) -> float:
        """The value at the last point."""
        return float(self.losses[-1])


def minimize(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x0: Sequence[float] | np.ndarray | torch.Tensor,
    optimizer: str = "adam",
    steps: int = 1000,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    seed: int = 0,
    **hyperparameters: Any,
) -> Trajectory:
    """Minimise ``fn`` from ``x0`` with a registered optimizer and return the path.

    An optimizer that needs curvature (it exposes ``curvature_due``) gets Hutchinson's
    estimate of the Hessian diagonal whenever it asks; one whose step scales with the number
    of predictions (it accepts ``bs``) gets ``bs=1``: the function is one prediction.

    Args:
        fn: maps a tensor of shape ``(dim,)`` to a scalar tensor, differentiably.
        x0: the start.
        optimizer: a name from :data:`descent.optim.OPTIMIZERS`.
        steps: number of optimizer steps.
        dtype, device: where the iterate lives (float64 on CPU by default).
        seed: seeds the curvature probes.
        **hyperparameters: passed to :func:`descent.optim.create_optimizer` (``lr=...``).

    The run stops early, with ``diverged_at`` set, when the value or the point is not finite.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"Invalid steps: {steps!r} (allowed: an integer >= 0)")
    device = resolve_device(device)
    x = torch.as_tensor(np.asarray(x0, dtype=np.float64), dtype=dtype, device=device)
    if x.dim() != 1 or x.numel() == 0:
        raise ValueError(f"x0 must be a non-empty vector, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"x0 must be finite, got {x.tolist()}")
    x = x.clone().requires_grad_(True)
    opt = create_optimizer(optimizer, [x], **hyperparameters)
    step_kwargs = {"bs": 1} if "bs" in inspect.signature(opt.step).parameters else {}
    generator = torch.Generator(device=x.device).manual_seed(seed)

    path, losses = [x.detach().cpu().numpy().copy()], []
    diverged_at = None
    for step in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        value = _scalar(fn(x))
        losses.append(value.item())
        if not (torch.isfinite(value) and torch.isfinite(x).all()):
            diverged_at = step
            break
        if step == steps:
            break
        value.backward()
        opt.step(**step_kwargs)
        path.append(x.detach().cpu().numpy().copy())
        if getattr(opt, "curvature_due", False):
            diagonal = hutchinson(_scalar(fn(x)), [x], generator=generator)
            opt.update_hessian(diagonal)
    return Trajectory(np.array(path), np.array(losses), diverged_at)


def _scalar(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise TypeError("fn must return a scalar tensor")
    return value.reshape(())
