"""Lion: evolved sign momentum (Chen et al. 2023)."""

from __future__ import annotations

from typing import Any

import torch

from descent.optim import _fused
from descent.optim._base import DescentOptimizer, group_by_device_and_dtype
from descent.optim._validation import check_betas, check_non_negative


class Lion(DescentOptimizer):
    r"""Lion, exact to the authors' PyTorch code (google/automl ``lion/lion_pytorch.py``).

    For every parameter, with gradient :math:`g` and momentum :math:`m`:

    .. math::
        \theta &\leftarrow \theta\,(1 - \eta\lambda) \\
        c &\leftarrow \beta_1 m + (1 - \beta_1)\,g \\
        \theta &\leftarrow \theta - \eta\,\operatorname{sign}(c) \\
        m &\leftarrow \beta_2 m + (1 - \beta_2)\,g

    No bias correction and no epsilon; ``sign(0) = 0``. The state is one tensor per
    parameter (``exp_avg``), half of Adam's.

    Args:
        params: iterable of tensors or of param-group dicts.
        lr: learning rate :math:`\eta` (default 1e-4). The authors advise 3-10x smaller
            than AdamW's.
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.99)); (0.95, 0.98) for stability.
        weight_decay: decoupled decay :math:`\lambda` (default 0.0); the effective decay is
            :math:`\eta\lambda`, so use 3-10x AdamW's. Unlike lion-pytorch with
            ``decoupled_weight_decay=True``, it is never divided by the initial lr.
        foreach: ``True`` for the multi-tensor ``torch._foreach_*`` path, ``False`` for the
            single-tensor loop, ``None`` (default) picks foreach when every tensor is on an
            accelerator. Both paths give the same numbers.
        fused: ``True`` for the fused one-pass kernel (:mod:`descent.optim._fused`), ``False``
            to never use it, ``None`` (default) uses it on CPU where it builds, unless
            ``foreach`` is set. Same numbers as the single-tensor path; tensors it cannot take
            (not contiguous, not float32/float64) go through the foreach path.

    References:
        Chen et al., "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_betas(group["betas"])
        check_non_negative("weight_decay", group["weight_decay"])

    @torch.no_grad()
    def step(self, closure: Any = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            hyperparameters = dict(
                lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"]
            )
            if self._fused_wanted(group) and _fused.planned_step(
                self, index, "lion", _fused.lion_scalars(**hyperparameters)
            ):
                continue
            params = self._params_with_grad(group)
            if not params:
                continue
            grads, exp_avgs = [], []
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
            if self._use_fused(group, params):
                params, grads, exp_avgs = _fused.lion(params, grads, exp_avgs, **hyperparameters)
                update = _foreach_lion
            else:
                update = _foreach_lion if self._use_foreach(group, params) else _single_tensor_lion
            if params:
                update(params, grads, exp_avgs, **hyperparameters)
        return loss


def _single_tensor_lion(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
) -> None:
    for param, grad, exp_avg in zip(params, grads, exp_avgs):
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
        update = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign_()
        param.add_(update, alpha=-lr)
        exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)


def _foreach_lion(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
) -> None:
    for bucket_params, bucket_grads, bucket_exp_avgs in group_by_device_and_dtype(
        params, grads, exp_avgs
    ):
        if weight_decay != 0:
            torch._foreach_mul_(bucket_params, 1 - lr * weight_decay)
        updates = torch._foreach_mul(bucket_exp_avgs, beta1)
        torch._foreach_add_(updates, bucket_grads, alpha=1 - beta1)
        torch._foreach_sign_(updates)
        torch._foreach_add_(bucket_params, updates, alpha=-lr)
        torch._foreach_mul_(bucket_exp_avgs, beta2)
        torch._foreach_add_(bucket_exp_avgs, bucket_grads, alpha=1 - beta2)
