"""Divergence guard: detect a bad step before it is taken, roll back, cut the lr, go on.

The loop asks :meth:`DivergenceGuard.check` after the backward pass and before the optimizer
step, with the step's loss and gradient norm. A non-finite value, or (when configured) a loss
above ``loss_factor`` times the running minimum, is a failure: the model and the optimizer
return to the last in-memory snapshot of a good state, the lr is multiplied by ``lr_cut``,
and training continues with the next batch. After ``max_rollbacks`` failures with no new good
snapshot in between, :class:`DivergenceError` stops the run.

The loss is checked at every step. The gradient norm is checked whenever the loop measures
it: at every step when clipping by norm, otherwise at log steps. Measuring it at every step
would cost a pass over all gradients (about 5% of a small model's step); a non-finite gradient
on an unmeasured step makes the weights non-finite, which the next loss shows, and a snapshot
is never taken of non-finite weights, so the rollback still lands on a good state.

Snapshots are taken every ``snapshot_every`` accepted steps (and at the first one), at a moment
the current weights are known to be good: their loss and gradient have just passed the check.
A snapshot copies the model and the optimizer state, so it is not taken at every step: at the
default interval of 100 its cost is well under 1% of a step. Snapshots live in memory only;
a resumed run takes its first one at its first step, so a rollback soon after a resume can
land on a later state than the uninterrupted run's would (runs without rollbacks resume
exactly).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch


class DivergenceError(RuntimeError):
    """Training kept diverging after the allowed number of rollbacks."""


class DivergenceGuard:
    """Rollback bookkeeping: running minimum, lr scale, the last good snapshot.

    Args:
        loss_factor: a loss above ``loss_factor * running minimum`` fails (None: only
            non-finite values fail).
        lr_cut: lr multiplier applied at each rollback, in (0, 1).
        max_rollbacks: consecutive rollbacks allowed before :class:`DivergenceError`.
        snapshot_every: accepted steps between snapshots.
    """

    def __init__(
        self,
        loss_factor: float | None = None,
        lr_cut: float = 0.5,
        max_rollbacks: int = 5,
        snapshot_every: int = 100,
    ) -> None:
        self.loss_factor = loss_factor
        self.lr_cut = lr_cut
        self.max_rollbacks = max_rollbacks
        self.snapshot_every = snapshot_every
        self.running_min = math.inf
        self.lr_scale = 1.0
        self.consecutive_rollbacks = 0
        self._snapshot: tuple[dict[str, Any], dict[str, Any], int] | None = None

    def check(self, loss: float, grad_norm: float | None) -> str | None:
        """Why this step must not be taken, or None when it is fine.

        ``grad_norm`` is None on steps where the loop did not measure it (see the module doc).
        """
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if grad_norm is not None and not math.isfinite(grad_norm):
            return f"non-finite gradient norm ({grad_norm})"
        if self.loss_factor is not None and loss > self.loss_factor * self.running_min:
            return (
                f"loss {loss:.6g} above {self.loss_factor:g} x its running minimum "
                f"{self.running_min:.6g}"
            )
        return None

    def accept(
        self, step: int, loss: float, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> str | None:
        """Record a good step; snapshot the current state when one is due.

        Returns a reason to roll back instead when the weights about to be saved are not
        finite (a non-finite gradient on a step whose norm was not measured can leave weights
        that some batches never touch, such as embedding rows, non-finite).
        """
        if self._snapshot is None or step % self.snapshot_every == 0:
            with torch.no_grad():
                weights = [p for p in model.parameters() if p.is_floating_point()]
                finite = all(bool(torch.isfinite(p).all()) for p in weights)
            if not finite:
                return "non-finite weights"
            model_state = _copy_state(model.state_dict())
            self._snapshot = (model_state, _copy_state(optimizer.state_dict()), step)
            self.consecutive_rollbacks = 0
        self.running_min = min(self.running_min, loss)
        return None

    def rollback(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, reason: str
    ) -> int:
        """Restore the last snapshot and cut the lr; return the snapshot's step.

        Raises:
            DivergenceError: too many rollbacks in a row, or nothing good to return to.
        """
        self.consecutive_rollbacks += 1
        if self._snapshot is None:
            raise DivergenceError(
                f"training diverged before any good step ({reason}); lower the lr "
                "(descent lr-find suggests one) or clip the gradients"
            )
        if self.consecutive_rollbacks > self.max_rollbacks:
            raise DivergenceError(
                f"training diverged {self.consecutive_rollbacks} times in a row (last: {reason}) "
                f"after cutting the lr to {self.lr_scale:g} x the schedule's; lower the lr, clip "
                "the gradients or raise guard_max_rollbacks"
            )
        model_state, optimizer_state, step = self._snapshot
        model.load_state_dict(model_state)
        # load_state_dict keeps the tensors it is given: hand it a copy so the snapshot survives.
        optimizer.load_state_dict(_copy_state(optimizer_state))
        self.lr_scale *= self.lr_cut
        return step

    def state_dict(self) -> dict[str, Any]:
        """Counters for a checkpoint (the snapshot itself is not saved; see the module doc)."""
        return {
            "running_min": self.running_min,
            "lr_scale": self.lr_scale,
            "consecutive_rollbacks": self.consecutive_rollbacks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.running_min = float(state["running_min"])
        self.lr_scale = float(state["lr_scale"])
        self.consecutive_rollbacks = int(state["consecutive_rollbacks"])


def _copy_state(state: Any) -> Any:
    """A copy of a (nested) state dict whose tensors share nothing with the original.

    A plain recursion: copy.deepcopy's memo bookkeeping costs more than the copying here.
    """
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        copied = type(state)((key, _copy_state(value)) for key, value in state.items())
        if hasattr(state, "_metadata"):  # module versions, read by load_state_dict
            copied._metadata = copy.deepcopy(state._metadata)
        return copied
    if isinstance(state, (list, tuple)):
        return type(state)(_copy_state(value) for value in state)
    return copy.copy(state)
