"""Sophia, a clipped second-order optimizer (Liu et al. 2024), and its curvature estimators."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from descent.optim import _fused
from descent.optim._base import DescentOptimizer, group_by_device_and_dtype
from descent.optim._validation import (
    check_betas,
    check_non_negative,
    check_positive,
    check_positive_int,
)

PROBES = ("gaussian", "rademacher")


class Sophia(DescentOptimizer):
    r"""SophiaG, exact to the official code (Liuhong99/Sophia ``sophia.py``, PyPI ``sophia-opt``).

    Every step, with gradient :math:`g`, momentum :math:`m` and diagonal curvature :math:`h`:

    .. math::
        \theta &\leftarrow \theta\,(1 - \eta\lambda) \\
        m &\leftarrow \beta_1 m + (1 - \beta_1)\,g \\
        r &\leftarrow \min\!\left(\frac{|m|}{\rho\cdot bs\cdot \max(h, 0) + \epsilon},\ 1\right) \\
        \theta &\leftarrow \theta - \eta\,\operatorname{sign}(m)\,r

    and every ``k`` steps, from a separate backward pass (:meth:`update_hessian`):

    .. math:: h \leftarrow \beta_2 h + (1 - \beta_2)\,\hat h

    with :math:`\hat h = \hat g \odot \hat g` for the Gauss-Newton-Bartlett estimator
    (:func:`gnb_loss`) or :math:`\hat h = u \odot (\nabla^2 L\,u)` for Hutchinson's
    (:func:`hutchinson`). :math:`h` starts at zero, so the first ``k`` steps are sign steps.

    A training loop asks :attr:`curvature_due` after each step; when it is true it runs the
    estimator on a batch and calls :meth:`update_hessian`. By hand, after
    ``optimizer.step(bs=...)``::

        if optimizer.curvature_due:
            optimizer.zero_grad(); gnb_loss(model(x)).backward(); optimizer.update_hessian()

    Difference from the official code: the official ratio divides by :math:`\rho\,bs\,h +
    \epsilon` even where :math:`h < 0`, which flips the step's sign; here :math:`h` is clamped
    at zero in the denominator so that a negative Hutchinson estimate gives the sign step
    :math:`\eta\,\operatorname{sign}(m)`. For :math:`h \ge 0` (always, with GNB) the two are
    bitwise equal. ``eps`` is fixed at 1e-15 in the official code and a parameter here.

    Args:
        params: iterable of tensors or of param-group dicts.
        lr: learning rate :math:`\eta` (default 1e-4).
        betas: :math:`(\beta_1, \beta_2)` for the momentum and the curvature average
            (default (0.965, 0.99)).
        rho: clipping scale :math:`\rho` (default 0.04); raise it to raise the win rate.
        weight_decay: decoupled decay :math:`\lambda` (default 0.1).
        eps: :math:`\epsilon` (default 1e-15).
        k: refresh the curvature every ``k`` steps (default 10).
        bs: predictions per optimizer step (tokens for a language model, examples for a
            classifier). ``step(bs=...)`` overrides and remembers it; a step without any
            ``bs`` raises rather than silently using a wrong scale.
        foreach: multi-tensor path (``True``), single-tensor loop (``False``) or pick
            (``None``, the default: foreach when every tensor is on an accelerator).
        fused: one-pass fused kernel for the step and :meth:`update_hessian` (``True``),
            never (``False``), or on CPU where it builds unless ``foreach`` is set (``None``,
            the default). Same numbers as the single-tensor path.

    References:
        Liu, Li, Hall, Liang, Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for
        Language Model Pre-training", ICLR 2024, arXiv:2305.14342.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 0.1,
        eps: float = 1e-15,
        k: int = 10,
        bs: int | None = None,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            rho=rho,
            weight_decay=weight_decay,
            eps=eps,
            k=k,
            bs=bs,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_betas(group["betas"])
        check_positive("rho", group["rho"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_positive("eps", group["eps"])
        check_positive_int("k", group["k"])
        if group["bs"] is not None:
            check_positive_int("bs", group["bs"])

    # -- the protocol a training loop reads: no loop asks for this class by name --------------

    @property
    def curvature_interval(self) -> int:
        """Steps between curvature refreshes (``k``)."""
        return self.param_groups[0]["k"]

    @property
    def curvature_due(self) -> bool:
        """True right after every ``k``-th step: time to call :meth:`update_hessian`."""
        steps = self.steps_taken
        return steps > 0 and steps % self.curvature_interval == 0

    @property
    def steps_taken(self) -> int:
        """Optimizer steps taken so far (restored by ``load_state_dict``)."""
        for state in self.state.values():
            if "step" in state:
                return int(state["step"])
        return 0

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["hessian"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def update_hessian(self, diagonal: Mapping[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Fold one curvature estimate into the running average :math:`h`.

        Args:
            diagonal: ``None`` (GNB): use each parameter's ``.grad``, which must hold the
                gradient :math:`\\hat g` of :func:`gnb_loss`, and fold in :math:`\\hat g^2`.
                Otherwise a mapping parameter -> estimate of the Hessian diagonal, such as
                :func:`hutchinson` returns; parameters missing from it are left alone.
        """
        for index, group in enumerate(self.param_groups):
            beta2 = group["betas"][1]
            if (
                diagonal is None
                and self._fused_wanted(group)
                and _fused.planned_step(self, index, "hessian", [beta2, 1 - beta2, 1.0])
            ):
                continue
            if diagonal is None:
                params = self._params_with_grad(group)
                estimates = [p.grad for p in params]
            else:
                params = [p for p in group["params"] if p in diagonal]
                estimates = [diagonal[p] for p in params]
                for p, estimate in zip(params, estimates):
                    if estimate.shape != p.shape:
                        raise ValueError(
                            f"Hessian estimate has shape {tuple(estimate.shape)}, "
                            f"parameter has {tuple(p.shape)}"
                        )
            if not params:
                continue
            hessians = [self._init_state(p)["hessian"] for p in params]
            use_fused = self._use_fused(group, params)
            if use_fused:  # the rows the kernel cannot take fall through to foreach
                hessians, estimates = _fused.hessian(
                    hessians, estimates, beta2=beta2, square=diagonal is None
                )
            if use_fused or self._use_foreach(group, params):
                for bucket_h, bucket_e in group_by_device_and_dtype(hessians, estimates):
                    torch._foreach_mul_(bucket_h, beta2)
                    if diagonal is None:
                        torch._foreach_addcmul_(bucket_h, bucket_e, bucket_e, value=1 - beta2)
                    else:
                        torch._foreach_add_(bucket_h, bucket_e, alpha=1 - beta2)
            else:
                for h, e in zip(hessians, estimates):
                    h.mul_(beta2)
                    if diagonal is None:
                        h.addcmul_(e, e, value=1 - beta2)
                    else:
                        h.add_(e, alpha=1 - beta2)

    @torch.no_grad()
    def step(self, closure: Any = None, bs: int | None = None) -> torch.Tensor | None:
        """One Sophia step; ``bs`` is the number of predictions behind this step's gradient."""
        if bs is not None:
            check_positive_int("bs", bs)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            if bs is not None:
                group["bs"] = bs
            hyperparameters = dict(
                lr=group["lr"],
                beta1=group["betas"][0],
                rho_bs=group["rho"] * (group["bs"] or 0),
                weight_decay=group["weight_decay"],
                eps=group["eps"],
            )
            if (
                group["bs"] is not None
                and self._fused_wanted(group)
                and _fused.planned_step(
                    self, index, "sophia", _fused.sophia_scalars(**hyperparameters)
                )
            ):
                continue
            params = self._params_with_grad(group)
            if not params:
                continue
            if group["bs"] is None:
                raise ValueError(
                    "Sophia needs bs, the number of predictions per step (tokens for a language "
                    "model, examples for a classifier): pass step(bs=...) or Sophia(..., bs=...)"
                )
            grads, exp_avgs, hessians, steps = [], [], [], []
            for p in params:
                state = self._init_state(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                hessians.append(state["hessian"])
                steps.append(state["step"])
            rows = (params, grads, exp_avgs, hessians, steps)
            if self._use_fused(group, params):
                rows = _fused.sophia(*rows, **hyperparameters)
                update = _foreach_sophia
            else:
                use_foreach = self._use_foreach(group, params)
                update = _foreach_sophia if use_foreach else _single_tensor_sophia
            if rows[0]:
                update(*rows, **hyperparameters)
        return loss

    @torch.no_grad()
    def win_rate(self) -> float:
        """Fraction of coordinates whose last step was not clipped: :math:`|m| < \\rho\\,bs\\,h`.

        Computed on demand from the state (zero cost to :meth:`step`); call it after a step and
        before the next :meth:`update_hessian`. The authors advise keeping it in 0.1-0.5.
        """
        unclipped, total = 0, 0
        for group in self.param_groups:
            if group["bs"] is None:
                continue
            rho_bs = group["rho"] * group["bs"]
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                unclipped += int((state["exp_avg"].abs() < rho_bs * state["hessian"]).sum())
                total += p.numel()
        return unclipped / total if total else 0.0


def _single_tensor_sophia(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    hessians: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    rho_bs: float,
    weight_decay: float,
    eps: float,
) -> None:
    for param, grad, exp_avg, hessian, step in zip(params, grads, exp_avgs, hessians, steps):
        step += 1
        param.mul_(1 - lr * weight_decay)
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        ratio = exp_avg.abs().div_(hessian.clamp(min=0).mul_(rho_bs).add_(eps)).clamp_(max=1)
        param.addcmul_(exp_avg.sign(), ratio, value=-lr)


def _foreach_sophia(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    hessians: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    rho_bs: float,
    weight_decay: float,
    eps: float,
) -> None:
    torch._foreach_add_(steps, 1)
    for bucket_p, bucket_g, bucket_m, bucket_h in group_by_device_and_dtype(
        params, grads, exp_avgs, hessians
    ):
        torch._foreach_mul_(bucket_p, 1 - lr * weight_decay)
        torch._foreach_mul_(bucket_m, beta1)
        torch._foreach_add_(bucket_m, bucket_g, alpha=1 - beta1)
        denominators = torch._foreach_clamp_min(bucket_h, 0)
        torch._foreach_mul_(denominators, rho_bs)
        torch._foreach_add_(denominators, eps)
        ratios = torch._foreach_abs(bucket_m)
        torch._foreach_div_(ratios, denominators)
        torch._foreach_clamp_max_(ratios, 1)
        torch._foreach_addcmul_(bucket_p, torch._foreach_sign(bucket_m), ratios, value=-lr)


def gnb_loss(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The Gauss-Newton-Bartlett loss: mean cross-entropy against labels sampled from the model.

    Labels :math:`\\hat y \\sim \\operatorname{softmax}(\\text{logits})` are drawn at every
    position (all tokens of a sequence model, not only the last). The gradient of this loss,
    :math:`\\hat g`, is what :meth:`Sophia.update_hessian` squares.

    Args:
        logits: ``(..., classes)`` unnormalised scores, still attached to the graph.
        generator: optional ``torch.Generator`` for reproducible sampling.
    """
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError(
            f"gnb_loss needs logits of shape (..., classes) with classes >= 2, "
            f"got {tuple(logits.shape)}"
        )
    flat = logits.reshape(-1, logits.shape[-1])
    with torch.no_grad():
        probabilities = torch.softmax(flat.float(), dim=-1)
        sampled = torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)
    return F.cross_entropy(flat, sampled)


def hutchinson(
    loss: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    probe: str = "gaussian",
    generator: torch.Generator | None = None,
) -> dict[torch.Tensor, torch.Tensor]:
    """Hutchinson's unbiased estimate of the Hessian diagonal, :math:`u \\odot (\\nabla^2 L\\,u)`.

    One Hessian-vector product by double backward. Works for any twice-differentiable loss;
    entries can be negative where the loss is not convex.

    Args:
        loss: scalar loss, built with a graph (not under ``torch.no_grad``).
        params: the parameters to estimate for (those without a gradient path are skipped).
        probe: ``"gaussian"`` (:math:`u \\sim N(0, I)`) or ``"rademacher"`` (:math:`u_i = \\pm 1`
            with equal probability).
        generator: optional ``torch.Generator`` (on the parameters' device) for the probes.

    Returns:
        A dict parameter -> estimate, ready for :meth:`Sophia.update_hessian`.
    """
    if probe not in PROBES:
        raise ValueError(f"Invalid probe: {probe!r} (allowed: {', '.join(PROBES)})")
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    used = [(p, g) for p, g in zip(params, grads) if g is not None]
    if not used:
        raise ValueError("hutchinson: the loss does not depend on any of the given parameters")
    probes = [_probe(p, probe, generator) for p, _ in used]
    products = torch.autograd.grad(
        [g for _, g in used], [p for p, _ in used], grad_outputs=probes, allow_unused=True
    )
    return {
        p: (u * hu if hu is not None else torch.zeros_like(p)).detach()
        for (p, _), u, hu in zip(used, probes, products)
    }


def _probe(p: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    if kind == "gaussian":
        return torch.randn(p.shape, generator=generator, dtype=p.dtype, device=p.device)
    signs = torch.randint(0, 2, p.shape, generator=generator, device=p.device)
    return signs.to(p.dtype).mul_(2).sub_(1)
