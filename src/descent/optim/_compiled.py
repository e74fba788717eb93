"""Accelerators: the fused Lion and Sophia updates compiled by torch.compile (Triton on CUDA).

Not measured here (no GPU on the machine this was written on): used only with ``fused=True``
on accelerators, where :mod:`descent.optim._fused` hands these rows over. One graph per kind,
(device, dtype) bucket and set of shapes, traced once per process; hyperparameters travel in a
tensor, so a changing lr never recompiles. The same graphs run on CPU in the tests (inductor's
C++ backend), which pins their arithmetic.
"""

from __future__ import annotations

from typing import Any

import torch


def _lion_graph(params, grads, exp_avgs, scalars):
    decay, neg_lr, beta1, one_minus_beta1, beta2, one_minus_beta2 = scalars.unbind()
    for p, g, m in zip(params, grads, exp_avgs):
        c = m * beta1 + g * one_minus_beta1
        p.mul_(decay).add_(torch.sign(c) * neg_lr)
        m.mul_(beta2).add_(g * one_minus_beta2)


def _sophia_graph(params, grads, exp_avgs, hessians, scalars):
    decay, neg_lr, beta1, one_minus_beta1, rho_bs, eps = scalars.unbind()
    for p, g, m, h in zip(params, grads, exp_avgs, hessians):
        m.mul_(beta1).add_(g * one_minus_beta1)
        ratio = (m.abs() / (h.clamp(min=0) * rho_bs + eps)).clamp(max=1)
        p.mul_(decay).add_(torch.sign(m) * neg_lr * ratio)


def _hessian_graph(hessians, estimates, scalars, square: bool):
    beta2, one_minus_beta2 = scalars.unbind()
    for h, e in zip(hessians, estimates):
        h.mul_(beta2).add_((one_minus_beta2 * e) * e if square else e * one_minus_beta2)


_GRAPHS = {"lion": _lion_graph, "sophia": _sophia_graph, "hessian": _hessian_graph}
_compiled: dict[str, Any] = {}


def compiled(kind: str, *lists: list[torch.Tensor], hp: list[float], **options: Any) -> None:
    """Run update ``kind`` through torch.compile over ``lists`` (one device and dtype)."""
    if kind not in _compiled:
        _compiled[kind] = torch.compile(_GRAPHS[kind], fullgraph=True, dynamic=False)
    first = lists[0][0]
    scalars = torch.tensor(hp, dtype=first.dtype).to(first.device, non_blocking=True)
    _compiled[kind](*lists, scalars, **options)


def compiled_step(kind: str, *lists: list[torch.Tensor], hp: list[float], **options) -> None:
    """Bucket ``lists`` by device and dtype and run :func:`compiled` on each bucket."""
    from descent.optim._base import group_by_device_and_dtype

    for bucket in group_by_device_and_dtype(*lists):
        compiled(kind, *bucket, hp=hp, **options)
