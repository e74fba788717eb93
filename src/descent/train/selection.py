"""Where a run starts and which state it keeps: initialisation, restarts, early stopping."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def initialise(model: nn.Module, scheme: str, seed: int) -> None:
    """Re-draw weights of dim >= 2 (Xavier-uniform or He-normal) and zero the biases.

    ``"default"`` keeps the model's own initialisation. Norm weights are left alone.
    """
    if scheme == "default":
        return
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if p.dim() >= 2:
                    values = torch.empty(p.shape, dtype=p.dtype)
                    if scheme == "xavier":
                        nn.init.xavier_uniform_(values, generator=generator)
                    else:
                        nn.init.kaiming_normal_(values, nonlinearity="relu", generator=generator)
                    p.copy_(values)
                elif name == "bias":
                    p.zero_()


def reinitialise(model: nn.Module, scheme: str, seed: int) -> None:
    """A fresh start: the model's own ``reset_parameters`` (seeded) or the chosen scheme."""
    if scheme == "default":
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    else:
        initialise(model, scheme, seed)


class EarlyStopping:
    """Patience on one evaluation value; keeps a copy of the best weights."""

    def __init__(self, monitor: str, mode: str, patience: int | None) -> None:
        self.monitor, self.mode, self.patience = monitor, mode, patience
        self.best_record: dict[str, Any] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_evaluations = 0

    def update(self, record: dict[str, Any], model: nn.Module) -> bool:
        """Take one evaluation; True when patience has run out."""
        if self.monitor not in record:
            raise ValueError(
                f"monitor {self.monitor!r} is not among the evaluation values: "
                f"{', '.join(k for k in record if k not in ('step', 'epoch'))}"
            )
        value = record[self.monitor]
        best = None if self.best_record is None else self.best_record[self.monitor]
        better = best is None or (value < best if self.mode == "min" else value > best)
        if better and math.isfinite(value):
            self.best_record, self.bad_evaluations = dict(record), 0
            if self.patience is not None:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad_evaluations += 1
        return self.patience is not None and self.bad_evaluations >= self.patience

    def restore_best(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_record": self.best_record,
            "best_state": self.best_state,
            "bad_evaluations": self.bad_evaluations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_record = state["best_record"]
        self.best_state = state["best_state"]
        self.bad_evaluations = state["bad_evaluations"]
