"""Fused Lion and Sophia updates: one pass over memory per step, no temporaries.

An optimizer step is bound by memory bandwidth: Lion must read p, g, m and write p, m
(20 bytes per float32 parameter), Sophia's step reads h as well (24 bytes). The eager paths
allocate a temporary per operation and pass over memory 4-10 times. Here each update is one
loop over all of a group's tensors, with everything between the loads and the stores kept in
registers.

CPU route: a small C kernel (:mod:`descent.optim._kernels`: source, build, load) called once
per param group and dtype with arrays of the tensors' data pointers; its results are bitwise
equal to the single-tensor path's. After the first step a cached plan per group and update
keeps the pointers (the end of this module).

Rows the kernel cannot take (non-contiguous, half precision) are handed back to the caller,
which runs them on the foreach path. On accelerators, ``fused=True`` runs the same updates
through torch.compile (:mod:`descent.optim._compiled`).
"""

from __future__ import annotations

import array
import itertools
import operator
import weakref
from typing import Any

import torch

from descent.optim import _gather, _kernels
from descent.optim._compiled import compiled_step
from descent.optim._kernels import _DTYPES, _load, available, unavailable_reason

__all__ = ["available", "forget", "hessian", "lion", "planned_step", "sophia", "unavailable_reason"]

_is_cpu = operator.attrgetter("is_cpu")
_dtype = operator.attrgetter("dtype")
_layout = operator.attrgetter("layout")
_shape = operator.attrgetter("shape")


def _split(tensor_lists: tuple[list[torch.Tensor], ...]) -> tuple[dict, list[int]]:
    """Indices the kernels take, by dtype, and the indices they leave to the fallback.

    A row qualifies when all its tensors are dense, contiguous CPU tensors of one float dtype
    and one shape (a row whose shapes differ goes to the fallback, which raises as the
    single-tensor path does).
    The common case (every row qualifies, one dtype) is checked with ``map`` over whole lists:
    per-row Python costs more than the kernel on thousands of small tensors.
    """
    every = list(itertools.chain.from_iterable(tensor_lists))
    dtypes = set(map(_dtype, every))
    if (
        len(dtypes) == 1
        and next(iter(dtypes)) in _DTYPES
        and all(map(_is_cpu, every))
        and all(layout == torch.strided for layout in set(map(_layout, every)))
        and all(map(torch.Tensor.is_contiguous, every))
        and _same_shapes(tensor_lists)
    ):
        return {next(iter(dtypes)): None}, []
    by_dtype: dict[torch.dtype, list[int] | None] = {}
    rest: list[int] = []
    for index, row in enumerate(zip(*tensor_lists)):
        first = row[0]
        dtype = first.dtype
        if (
            dtype in _DTYPES
            and first.device.type == "cpu"
            and all(
                t.dtype == dtype and t.device.type == "cpu" and t.layout == torch.strided
                for t in row
            )
            and all(t.is_contiguous() for t in row)
            and all(t.shape == first.shape for t in row)
        ):
            by_dtype.setdefault(dtype, []).append(index)
        else:
            rest.append(index)
    return by_dtype, rest


def _same_shapes(tensor_lists: tuple[list[torch.Tensor], ...]) -> bool:
    shapes = list(map(_shape, tensor_lists[0]))
    return all(list(map(_shape, tensors)) == shapes for tensors in tensor_lists[1:])


def _call(name: str, dtype: torch.dtype, lists, indices: list[int] | None, hp: list[float]):
    """Run kernel ``name`` over rows ``indices`` of ``lists`` (``None``: every row)."""
    library = _load()
    if library is None:
        raise RuntimeError(f"fused kernels are unavailable: {_kernels._failure}")
    if indices is not None:
        lists = _rows(lists, indices)
    pointers = array.array("Q", map(torch.Tensor.data_ptr, itertools.chain.from_iterable(lists)))
    sizes = array.array("q", map(torch.Tensor.numel, lists[0]))
    hyper = array.array("d", hp)
    getattr(library, f"{name}_{_DTYPES[dtype]}")(
        pointers.buffer_info()[0],
        len(sizes),
        sizes.buffer_info()[0],
        hyper.buffer_info()[0],
        torch.get_num_threads(),
    )


def _rows(lists: tuple[list[torch.Tensor], ...], indices: list[int]):
    return tuple([lst[i] for i in indices] for lst in lists)


def lion(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
) -> tuple[list[torch.Tensor], ...]:
    """Fused Lion step over the rows it can take; returns the rows it left (p, g, m lists)."""
    lists = (params, grads, exp_avgs)
    by_dtype, rest = _split(lists)
    hp = lion_scalars(lr, beta1, beta2, weight_decay)
    for dtype, indices in by_dtype.items():
        _call("lion", dtype, lists, indices, hp)
    rest = _accelerated("lion", lists, rest, hp)
    return _rows(lists, rest)


def sophia(
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
) -> tuple[list[torch.Tensor], ...]:
    """Fused Sophia step (step counts too); returns the rows it left (p, g, m, h, step)."""
    lists = (params, grads, exp_avgs, hessians)
    by_dtype, rest = _split(lists)
    hp = sophia_scalars(lr, beta1, rho_bs, weight_decay, eps)
    if rest:
        taken = [i for indices in by_dtype.values() for i in indices]
        _add_one([steps[i] for i in taken])
    else:
        _add_one(steps)
    for dtype, indices in by_dtype.items():
        _call("sophia", dtype, lists, indices, hp)
    left = _accelerated("sophia", lists, rest, hp)
    if len(left) < len(rest):
        kept = set(left)
        torch._foreach_add_([steps[i] for i in rest if i not in kept], 1)
    return (*_rows(lists, left), [steps[i] for i in left])


def hessian(
    hessians: list[torch.Tensor], estimates: list[torch.Tensor], *, beta2: float, square: bool
) -> tuple[list[torch.Tensor], ...]:
    """Fused ``h = beta2*h + (1-beta2)*e*e`` (``square``) or ``... *e``; returns rows left."""
    lists = (hessians, estimates)
    by_dtype, rest = _split(lists)
    hp = [beta2, 1 - beta2, 1.0 if square else 0.0]
    for dtype, indices in by_dtype.items():
        _call("hessian", dtype, lists, indices, hp)
    rest = _accelerated("hessian", lists, rest, hp[:2], square=square)
    return _rows(lists, rest)


def _add_one(steps: list[torch.Tensor]) -> None:
    if set(map(_dtype, steps)) == {torch.float32} and all(map(_is_cpu, steps)):
        native, other = steps, []
    else:
        native = [s for s in steps if s.dtype == torch.float32 and s.is_cpu]
        other = [s for s in steps if not (s.dtype == torch.float32 and s.is_cpu)]
    if native:
        library = _load()
        pointers = array.array("Q", map(torch.Tensor.data_ptr, native))
        library.add_one_float32(pointers.buffer_info()[0], len(native))
    if other:
        torch._foreach_add_(other, 1)


def _accelerated(kind: str, lists, rest: list[int], hp: list[float], **options) -> list[int]:
    """Run the float32/float64 rows on accelerators through the compiled graphs; return the
    rows left. (Half precision stays on foreach, whose kernels compute in float32.)"""
    if not rest:
        return rest
    first = lists[0]
    moved = [i for i in rest if not first[i].is_cpu and first[i].dtype in _DTYPES]
    if moved:
        compiled_step(kind, *_rows(lists, moved), hp=hp, **options)
        taken = set(moved)
        return [i for i in rest if i not in taken]
    return rest


def lion_scalars(lr: float, beta1: float, beta2: float, weight_decay: float) -> list[float]:
    return [1 - lr * weight_decay, -lr, beta1, 1 - beta1, beta2, 1 - beta2]


def sophia_scalars(
    lr: float, beta1: float, rho_bs: float, weight_decay: float, eps: float
) -> list[float]:
    return [1 - lr * weight_decay, -lr, beta1, 1 - beta1, rho_bs, eps]


# -- the steady state: a cached plan per param group -------------------------------------------
#
# On thousands of small tensors even list-wide checks cost a large part of the kernel's time.
# After the first step, a group whose every row (parameter with a gradient) the kernel takes
# keeps its parameter and state pointers in a plan (one per group and update: the Lion or
# Sophia step, Sophia's GNB curvature update); a step then only gathers the gradients
# (:mod:`descent.optim._gather`: present, contiguous, of the plan's dtype and size, no
# parameter moved, no idle parameter with a gradient). The plan holds references to the state
# tensors (so its pointers never dangle) and is rebuilt when the optimizer's state changes
# (``state.version``: an entry added, replaced or removed, load_state_dict) or the group's
# parameters do.

# kind -> (whether the parameters' pointers lead, state keys whose pointers come before the
# gradients', state keys after them): the kernels' pointer layout.
_LAYOUTS = {
    "lion": (True, (), ("exp_avg",)),  # p, g, m
    "sophia": (True, (), ("exp_avg", "hessian")),  # p, g, m, h
    "hessian": (False, ("hessian",), ()),  # h, e (the estimate is the gradient: GNB)
}
_grad = operator.attrgetter("grad")
_data_ptr = torch.Tensor.data_ptr
_is_contiguous = torch.Tensor.is_contiguous
_numel = torch.Tensor.numel


class _Plan:
    __slots__ = (
        "__weakref__", "count", "dtype", "function", "grad_slot", "handle", "idle", "keep",
        "numels", "param_list", "param_ptrs", "pointers", "retry", "rows", "sizes",
        "state", "steps", "version",
    )  # fmt: skip

    def __init__(self, optimizer: Any, params: list[torch.Tensor], kind: str) -> None:
        # The plan holds the parameters and state tensors, so none of its pointers can be
        # freed and reused by another tensor while it lives.
        self.param_list = params
        self.state = optimizer.state
        self.version = optimizer.state.version  # any change to the state entries: rebuild
        self.dtype = None  # None: the kernel cannot take every row; use the general path
        self.handle = None  # the C++ gather's plan, where it is available
        # Its rows are the parameters with a gradient now; the others (frozen, unused) must
        # stay without one. A step where that changes rebuilds the plan. Together they are the
        # group's parameters as they were when the plan was made.
        self.rows = [p for p in params if p.grad is not None]
        self.idle = [p for p in params if p.grad is None]
        states = [optimizer.state.get(p) for p in self.rows]
        # Missing state (the first step, a parameter that just got its first gradient): the
        # general path creates it; retry the plan at the next step.
        self.retry = not self.rows or not all(states)
        library = _load()
        if self.retry or library is None:
            return
        lead, before_keys, after_keys = _LAYOUTS[kind]
        try:
            before = [[state[key] for state in states] for key in before_keys]
            after = [[state[key] for state in states] for key in after_keys]
        except KeyError:
            return
        rows = self.rows
        by_dtype, rest = _split((rows, *before, *after))
        if rest or len(by_dtype) != 1:
            return
        steps = [state["step"] for state in states] if kind == "sophia" else []
        if steps and not (set(map(_dtype, steps)) == {torch.float32} and all(map(_is_cpu, steps))):
            return
        self.dtype = next(iter(by_dtype))
        self.function = getattr(library, f"{kind}_{_DTYPES[self.dtype]}")
        self.keep = (before, after, steps)
        self.count = len(rows)
        self.param_ptrs = list(map(_data_ptr, rows))
        # The kernel's pointer array, reused every step: only the gradients' slots change.
        head = (self.param_ptrs if lead else []) + [
            pointer for tensors in before for pointer in map(_data_ptr, tensors)
        ]
        self.grad_slot = len(head)
        self.pointers = array.array("Q", head)
        self.pointers.extend(itertools.repeat(0, self.count))
        self.pointers.extend(map(_data_ptr, itertools.chain.from_iterable(after)))
        self.steps = array.array("Q", map(_data_ptr, steps))
        self.numels = list(map(torch.Tensor.numel, rows))
        self.sizes = array.array("q", self.numels)
        # A group of a few tensors never waits for the gather's one-time build (seconds; a
        # 2-D toy problem takes less): its Python checks cost microseconds. Once built, every
        # plan uses it.
        if _gather.available(build=len(params) >= GATHER_BUILD_FROM):
            self.handle = _gather.create(rows, self.idle, self.dtype)
            weakref.finalize(self, _gather.release, self.handle)


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
GATHER_BUILD_FROM = 32
"""Tensors in a group from which its plan builds the C++ gather where it is not built yet
(the Python checks cost about 10 µs per step at 32 tensors, the gather about 1.6 µs)."""


def forget(optimizer: Any) -> None:
    """Drop the optimizer's plans (its state tensors were replaced)."""
    _plans.pop(optimizer, None)


def planned_step(optimizer: Any, index: int, kind: str, hp: list[float]) -> bool:
    """Run group ``index``'s update ``kind`` ("lion", "sophia" or "hessian", the GNB
    curvature update from the gradients) from its plan.

    Returns False, having done nothing, where the plan does not apply: the first step (no
    state yet), a parameter without gradient, a non-contiguous gradient, a moved parameter, a
    row the kernel cannot take. The caller then takes the general path.
    """
    params = optimizer.param_groups[index]["params"]
    plans = _plans.get(optimizer)
    if plans is None:
        plans = _plans[optimizer] = {}
    key = (index, kind)
    plan = plans.get(key)
    if (
        plan is None
        or plan.param_list is not params
        or len(plan.rows) + len(plan.idle) != len(params)
        or plan.state is not optimizer.state
        or plan.version != optimizer.state.version
    ):
        plan = plans[key] = _Plan(optimizer, params, kind)
    if plan.dtype is None:
        if plan.retry:
            del plans[key]
        return False
    if plan.handle is not None:
        status = _gather.gather(plan.handle, plan.pointers.buffer_info()[0] + 8 * plan.grad_slot)
    else:
        status = _python_gather(plan)
    if status != _gather.OK:
        if status == _gather.STALE:
            del plans[key]
        return False
    hyper = array.array("d", hp)
    if plan.steps:
        _load().add_one_float32(plan.steps.buffer_info()[0], len(plan.steps))
    plan.function(
        plan.pointers.buffer_info()[0],
        plan.count,
        plan.sizes.buffer_info()[0],
        hyper.buffer_info()[0],
        torch.get_num_threads(),
    )
    return True


def _python_gather(plan: _Plan) -> int:
    """:func:`descent.optim._gather.gather` in Python, where the C++ library is unavailable:
    the same checks and answers; the gradients' pointers go into the plan's array."""
    # Each check below is one pass over the list in C (map), as few as safety allows: on
    # thousands of small tensors the tensors' metadata is usually out of cache (the previous
    # step streamed hundreds of MiB), and each pass costs a few percent of the step.
    if list(map(_data_ptr, plan.rows)) != plan.param_ptrs:
        return _gather.STALE  # a parameter's storage moved (or another took its slot)
    if any(grad is not None for grad in map(_grad, plan.idle)):
        return _gather.STALE  # an idle parameter got a gradient
    grads = list(map(_grad, plan.rows))
    try:
        grad_ptrs = array.array("Q", map(_data_ptr, grads))
        # torch keeps a gradient's device and shape equal to its parameter's current ones; its
        # strides and (with ``grad_dtype``) dtype are free.
        if set(map(_dtype, grads)) != {plan.dtype} or not all(map(_is_contiguous, grads)):
            return _gather.GENERAL
    except TypeError:  # None has no data_ptr
        return _gather.STALE  # a row lost its gradient
    except RuntimeError:  # sparse layouts have no data_ptr
        return _gather.GENERAL
    # ``p.data = p.data[:k]`` keeps the pointer and shrinks the parameter and its next
    # gradient: the kernel must never read past a gradient's end, and the plan is stale.
    if list(map(_numel, grads)) != plan.numels:
        return _gather.STALE
    slot = plan.grad_slot
    plan.pointers[slot : slot + plan.count] = grad_ptrs
    return _gather.OK
