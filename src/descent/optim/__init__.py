"""The update rules: a registry of torch.optim's own optimizers and descent's, by name.

``create_optimizer("lion", model.parameters(), lr=3e-5)`` builds one; ``OPTIMIZERS`` lists them.
torch's SGD, Adam, AdamW, Adagrad and RMSprop are used as they are, never rewritten.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from descent.optim import _validation as check
from descent.optim.adam_init import init_second_moment
from descent.optim.lion import Lion
from descent.optim.rgd import rgd_loss, rgd_weights
from descent.optim.sophia import Sophia, gnb_loss, hutchinson


@dataclass(frozen=True)
class OptimizerSpec:
    """One registry entry: the class and the hyperparameters this name presets."""

    cls: type[torch.optim.Optimizer]
    presets: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Every accepted hyperparameter with its default (presets override the class's)."""
        signature = inspect.signature(self.cls.__init__)
        defaults = {
            name: parameter.default
            for name, parameter in signature.parameters.items()
            if name not in ("self", "params")
            and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        }
        return {**defaults, **self.presets}


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(torch.optim.SGD, {}, "plain gradient descent (torch.optim.SGD)"),
    "momentum": OptimizerSpec(
        torch.optim.SGD, {"momentum": 0.9}, "SGD with heavy-ball momentum 0.9"
    ),
    "nesterov": OptimizerSpec(
        torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, "SGD with Nesterov momentum 0.9"
    ),
    "adam": OptimizerSpec(torch.optim.Adam, {}, "Adam (torch.optim.Adam)"),
    "adamw": OptimizerSpec(torch.optim.AdamW, {}, "AdamW, decoupled decay (torch.optim.AdamW)"),
    "adagrad": OptimizerSpec(torch.optim.Adagrad, {}, "Adagrad (torch.optim.Adagrad)"),
    "rmsprop": OptimizerSpec(torch.optim.RMSprop, {}, "RMSprop (torch.optim.RMSprop)"),
    "lion": OptimizerSpec(Lion, {}, "Lion, sign of interpolated momentum (arXiv:2302.06675)"),
    "sophia": OptimizerSpec(Sophia, {}, "SophiaG, clipped diagonal Newton (arXiv:2305.14342)"),
}

# Checks applied to any optimizer that takes the hyperparameter: torch's own classes accept
# a NaN learning rate, for example, and would silently produce NaN weights.
_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "lr": check.check_non_negative,
    "weight_decay": check.check_non_negative,
    "momentum": check.check_non_negative,
    "dampening": check.check_non_negative,
    "eps": check.check_non_negative,
    "alpha": check.check_non_negative,
    "lr_decay": check.check_non_negative,
    "initial_accumulator_value": check.check_non_negative,
    "rho": check.check_positive,
    "k": check.check_positive_int,
    "betas": lambda _name, value: check.check_betas(value),
}


def create_optimizer(name: str, params: Any, **hyperparameters: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` over ``params``.

    Args:
        name: a key of :data:`OPTIMIZERS` (case-insensitive), e.g. ``"adamw"`` or ``"lion"``.
        params: iterable of tensors or of param-group dicts.
        **hyperparameters: overrides of the entry's defaults (see
            ``OPTIMIZERS[name].hyperparameters``).

    Raises:
        ValueError: unknown name, unknown hyperparameter, or a value outside its range.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    spec = OPTIMIZERS[key]
    allowed = spec.hyperparameters
    unknown = sorted(set(hyperparameters) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown hyperparameter(s) {', '.join(unknown)} for optimizer {key!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    chosen = {**spec.presets, **hyperparameters}
    for hyperparameter, value in chosen.items():
        if hyperparameter in _CHECKS:
            _CHECKS[hyperparameter](hyperparameter, value)
    return spec.cls(check.check_params(params), **chosen)


__all__ = [
    "OPTIMIZERS",
    "Lion",
    "OptimizerSpec",
    "Sophia",
    "create_optimizer",
    "gnb_loss",
    "hutchinson",
    "init_second_moment",
    "rgd_loss",
    "rgd_weights",
]
