"""Shared checks for optimizer hyperparameters: one message shape for every optimizer."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Invalid {name}: {value!r} (expected a real number)")
    if math.isnan(value):
        raise ValueError(f"Invalid {name}: nan (expected a finite number)")
    return float(value)


def check_non_negative(name: str, value: Any) -> float:
    """Return ``value`` as float if it is a finite number >= 0, else raise naming ``name``."""
    number = _number(name, value)
    if not 0.0 <= number < math.inf:
        raise ValueError(f"Invalid {name}: {value} (allowed: 0 <= {name} < inf)")
    return number


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` as float if it is a finite number > 0, else raise naming ``name``."""
    number = _number(name, value)
    if not 0.0 < number < math.inf:
        raise ValueError(f"Invalid {name}: {value} (allowed: 0 < {name} < inf)")
    return number


def check_betas(betas: Any) -> tuple[float, float]:
    """Return ``betas`` as a pair of floats, each in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))")
    checked = []
    for index, beta in enumerate(betas):
        number = _number(f"beta{index + 1}", beta)
        if not 0.0 <= number < 1.0:
            raise ValueError(f"Invalid beta{index + 1}: {beta} (allowed: 0 <= beta{index + 1} < 1)")
        checked.append(number)
    return checked[0], checked[1]


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Invalid {name}: {value!r} (expected an integer >= 1)")
    if value < 1:
        raise ValueError(f"Invalid {name}: {value} (allowed: {name} >= 1)")
    return value


def check_params(params: Any) -> list:
    """Materialise ``params`` and refuse an empty list with a clear message."""
    if isinstance(params, torch.Tensor):
        raise TypeError(
            "params must be an iterable of tensors or of param-group dicts, got a single Tensor; "
            "wrap it in a list: [tensor]"
        )
    if not isinstance(params, Iterable):
        raise TypeError(f"params must be an iterable of tensors, got {type(params).__name__}")
    params = list(params)
    if not params:
        raise ValueError("params is empty: the optimizer got no parameters to optimize")
    return params


def check_dense(param: torch.Tensor, optimizer: str) -> None:
    """Refuse sparse gradients, which none of descent's update rules define."""
    if param.grad is not None and param.grad.is_sparse:
        raise TypeError(
            f"{optimizer} does not support sparse gradients; use dense embeddings "
            "(nn.Embedding(sparse=False)) or torch.optim.SparseAdam"
        )
