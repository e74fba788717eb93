"""What descent's own optimizers share: group validation and (device, dtype) bucketing."""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any

import torch

from descent.optim import _fused
from descent.optim._validation import check_dense, check_params


class _Counting:
    """dict methods that count every change (dict's own ``update``, ``pop``, ... bypass
    ``__setitem__`` and ``__delitem__``)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, self._wrap(value))
        self._bump()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._bump()

    def pop(self, *args: Any) -> Any:
        self._bump()
        return super().pop(*args)

    def popitem(self) -> tuple:
        self._bump()
        return super().popitem()

    def clear(self) -> None:
        self._bump()
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: Any) -> Any:
        self.update(other)
        return self

    def _wrap(self, value: Any) -> Any:
        return value


class _ParamState(_Counting, dict):
    """One parameter's state, counting its changes on the optimizer's state version: the
    fused plans keep pointers to these tensors and must see a replaced one."""

    def __init__(self, book: _State, *args: Any, **kwargs: Any) -> None:
        dict.__init__(self, *args, **kwargs)
        self.book = book

    def _bump(self) -> None:
        self.book.version += 1

    def __reduce__(self) -> tuple:  # copies and pickles are plain dicts
        return (dict, (dict(self),))


class _State(_Counting, defaultdict):
    """``optimizer.state``: parameter -> :class:`_ParamState`; ``version`` counts every change
    of its entries or of theirs, an O(1) check for the fused plans."""

    def __init__(self, items: Any = ()) -> None:
        defaultdict.__init__(self, None)
        self.version = 0
        self.update(items)

    def __missing__(self, key: Any) -> _ParamState:
        self[key] = {}
        return dict.__getitem__(self, key)

    def _bump(self) -> None:
        self.version += 1

    def _wrap(self, value: Any) -> _ParamState:
        return (
            value
            if isinstance(value, _ParamState) and value.book is self
            else _ParamState(self, value)
        )

    def __reduce__(self) -> tuple:  # copies and pickles are a plain defaultdict(dict)
        return (_plain_state, (list(self.items()),))


def _plain_state(items: list) -> defaultdict:
    return defaultdict(dict, ((key, dict(value)) for key, value in items))


class DescentOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that validates every param group it is given.

    Subclasses implement ``_check_hyperparameters(group)``; it runs for the defaults and for
    every group added later, so a bad lr in a second param group is refused like a bad default.
    Its ``state`` counts changes (``state.version``), however it was set or replaced.
    """

    @property
    def state(self) -> _State:
        state = self.__dict__.get("state")
        if not isinstance(state, _State):
            state = self.__dict__["state"] = _State(state or ())
        return state

    @state.setter
    def state(self, value: Any) -> None:
        self.__dict__["state"] = value  # wrapped when next read

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, with plain dicts (``torch.load(weights_only=True)`` reads it)."""
        state_dict = super().state_dict()
        state_dict["state"] = {key: dict(value) for key, value in state_dict["state"].items()}
        return state_dict

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self._check_hyperparameters(defaults)
        super().__init__(check_params(params), defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_hyperparameters(merged)
        _check_path(merged)
        params = param_group["params"]
        tensors = [params] if isinstance(params, torch.Tensor) else list(params)
        for p in tensors:
            if isinstance(p, torch.Tensor) and p.is_complex():
                raise TypeError(f"{type(self).__name__} does not support complex parameters")
        super().add_param_group(param_group)

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _params_with_grad(self, group: dict[str, Any]) -> list[torch.Tensor]:
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            check_dense(p, type(self).__name__)
        return params

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state and hyperparameters; the code path (``foreach``, ``fused``) stays this
        optimizer's, so a checkpoint saved on one path continues on another."""
        paths = [{key: group.get(key) for key in _PATH_KEYS} for group in self.param_groups]
        super().load_state_dict(state_dict)
        _fused.forget(self)
        for group, path in zip(self.param_groups, paths):
            group.update(path)

    def _fused_wanted(self, group: dict[str, Any]) -> bool:
        """Whether this group asks for the fused path (whether it can run is checked later)."""
        fused = group.get("fused")
        return bool(fused) or (fused is None and group.get("foreach") is None)

    def _use_fused(self, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        if not self._fused_wanted(group):
            return False
        if group.get("fused") is None:
            # Accelerators: the compiled path is opt-in (fused=True) until it is measured there.
            return all(map(_is_cpu, params)) and _fused.available()
        if any(map(_is_cpu, params)) and not _fused.available():
            raise RuntimeError(
                f"{type(self).__name__}(fused=True): the fused kernels are unavailable "
                f"({_fused.unavailable_reason()}); use fused=None or fused=False"
            )
        return True

    def _use_foreach(self, group: dict[str, Any], params: list[torch.Tensor]) -> bool:
        if group["foreach"] is not None:
            return bool(group["foreach"])
        # Same rule as torch.optim: the multi-tensor path where every tensor is on an accelerator.
        return bool(params) and all(p.device.type != "cpu" for p in params)


_PATH_KEYS = ("foreach", "fused")
_is_cpu = operator.attrgetter("is_cpu")


def _check_path(group: dict[str, Any]) -> None:
    for key in _PATH_KEYS:
        value = group.get(key)
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"Invalid {key}: {value!r} (allowed: True, False or None)")
    if group.get("foreach") and group.get("fused"):
        raise ValueError("foreach=True and fused=True exclude each other: choose one path")


def group_by_device_and_dtype(
    *tensor_lists: list[torch.Tensor],
) -> list[tuple[list[torch.Tensor], ...]]:
    """Split parallel tensor lists into buckets whose tensors share device and dtype.

    ``torch._foreach_*`` kernels take their fast path only within one such bucket.
    """
    buckets: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], ...]] = defaultdict(
        lambda: tuple([] for _ in tensor_lists)
    )
    for row in zip(*tensor_lists):
        bucket = buckets[(row[0].device, row[0].dtype)]
        for column, tensor in zip(bucket, row):
            column.append(tensor)
    return list(buckets.values())
