"""Adam with a non-zero initial second moment (Abuduweili & Liu, CPAL 2025).

No new Adam class: torch.optim.Adam / AdamW create their state lazily, so filling
``exp_avg_sq`` before the first step is all the method needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from descent.optim._validation import check_non_negative, check_positive_int

METHODS = ("random", "data")


def init_second_moment(
    optimizer: torch.optim.Optimizer,
    model_or_params: nn.Module | Iterable[torch.Tensor],
    method: str = "random",
    scale: float = 1.0,
    *,
    data: Iterable[tuple[Any, Any]] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    examples: int = 5000,
    variance: bool = False,
    generator: torch.Generator | None = None,
) -> None:
    r"""Fill a fresh torch Adam/AdamW's second moment :math:`v_0` before its first step.

    Bias correction is unchanged, so the first step becomes
    :math:`\eta\,g / (\sqrt{\beta_2 v_0 / (1 - \beta_2) + g^2} + \epsilon)` instead of the
    sign-like :math:`\pm\eta` of :math:`v_0 = 0`.

    Methods:
        ``"random"``: :math:`v_0 = \sigma x^2`, :math:`x` drawn Xavier-normal for the tensor's
        fan-in and fan-out, on tensors of two or more dimensions; biases and norm weights
        keep :math:`v_0 = 0`.
        ``"data"``: average the gradients of ``loss_fn`` over about ``examples`` training
        examples from ``data`` (an iterable of ``(inputs, targets)`` batches; the model must
        be an ``nn.Module``); :math:`v_0 = \sigma (\mathbb E g)^2`, or with ``variance=True``
        :math:`\sigma (\mathbb E[g]^2 + b\,\operatorname{Var} g)` with :math:`b` the batch size.

    Args:
        optimizer: a ``torch.optim.Adam`` or ``AdamW`` that has not stepped yet.
        model_or_params: the model, or the parameters to initialise (all in ``optimizer``).
        method: ``"random"`` or ``"data"``.
        scale: :math:`\sigma` (default 1.0; the authors use 100 for CIFAR, 1.0 for a
            Transformer).
        data, loss_fn, examples, variance: for ``method="data"``.
        generator: optional ``torch.Generator`` for ``method="random"``.

    References:
        Abuduweili & Liu, "Revisiting the Initial Steps in Adaptive Gradient Descent
        Optimization", CPAL 2025, arXiv:2412.02153.
    """
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise TypeError(
            f"init_second_moment needs a torch.optim.Adam or AdamW, got {type(optimizer).__name__}"
        )
    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r} (allowed: {', '.join(METHODS)})")
    scale = check_non_negative("scale", scale)
    module = model_or_params if isinstance(model_or_params, nn.Module) else None
    params = list(model_or_params.parameters() if module is not None else model_or_params)
    owned = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    for p in params:
        if id(p) not in owned:
            raise ValueError("init_second_moment got a parameter that the optimizer does not hold")
        # A state at step 0 is one this function filled: filling it again just replaces v0.
        state = optimizer.state.get(p)
        if state and float(state.get("step", 0)) != 0:
            raise ValueError(
                "init_second_moment must run before the optimizer's first step "
                f"(it has taken {int(float(state['step']))})"
            )

    if method == "random":
        second_moments = [_xavier_squared(p, scale, generator) for p in params]
    else:
        if module is None or data is None or loss_fn is None:
            raise ValueError('method="data" needs the model (an nn.Module), data and loss_fn')
        second_moments = _gradient_moments(
            module, params, data, loss_fn, check_positive_int("examples", examples), variance
        )
        second_moments = [v.mul_(scale) for v in second_moments]

    for p, v0 in zip(params, second_moments):
        group = owned[id(p)]
        on_device = group.get("fused") or group.get("capturable")
        step_dtype = torch.float32 if group.get("fused") else _default_scalar_dtype()
        state = optimizer.state[p]
        state["step"] = torch.zeros((), dtype=step_dtype, device=p.device if on_device else None)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = v0.to(dtype=p.dtype, device=p.device)
        if group.get("amsgrad"):
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def _default_scalar_dtype() -> torch.dtype:
    # torch.optim keeps the step count in float64 only when that is the default dtype.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _xavier_squared(
    p: torch.Tensor, scale: float, generator: torch.Generator | None
) -> torch.Tensor:
    if p.dim() < 2:
        return torch.zeros_like(p)
    x = torch.empty_like(p)
    nn.init.xavier_normal_(x, generator=generator)
    return x.square_().mul_(scale)


def _gradient_moments(
    model: nn.Module,
    params: list[torch.Tensor],
    data: Iterable[tuple[Any, Any]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    examples: int,
    variance: bool,
) -> list[torch.Tensor]:
    sums = [torch.zeros_like(p) for p in params]
    squares = [torch.zeros_like(p) for p in params]
    batches, seen, batch_size = 0, 0, 0
    saved = [p.grad for p in params]
    try:
        for inputs, targets in data:
            for p in params:
                p.grad = None
            loss_fn(model(inputs), targets).backward()
            for total, square, p in zip(sums, squares, params):
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                total.add_(grad)
                square.addcmul_(grad, grad)
            batches += 1
            batch_size = max(batch_size, len(targets))
            seen += len(targets)
            if seen >= examples:
                break
    finally:
        for p, grad in zip(params, saved):
            p.grad = grad
    if batches == 0:
        raise ValueError('init_second_moment(method="data") got no batches from data')
    moments = []
    for total, square in zip(sums, squares):
        mean = total / batches
        v0 = mean.square()
        if variance:
            v0.add_((square / batches - v0).clamp_(min=0), alpha=batch_size)
        moments.append(v0)
    return moments
