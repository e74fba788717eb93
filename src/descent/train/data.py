"""Training data as a stream of batches that a step index can address, checked before training.

Three sources, one interface (``get(position) -> (x, y)``, ``batches_per_epoch``):

- ``(X, y)`` tensors or arrays: batches by indexing a per-epoch permutation, no DataLoader;
- a map-style ``Dataset``: the same permutation, items collated with ``default_collate``;
- a ``DataLoader``: its own batches and order, consumed in sequence.

The permutation of epoch ``e`` is a function of ``(seed, e)`` alone, so a resumed run asks for
position ``p`` and gets the very batch the uninterrupted run got, mid-epoch included.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate


def to_batches(
    data: Any,
    *,
    batch_size: int | None,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    allow_integer_inputs: bool,
    name: str = "train_data",
    shuffle: bool = True,
    clamp_batch_size: bool = False,
) -> TensorBatches | DatasetBatches | LoaderBatches:
    """Check ``data`` and wrap it as a batch stream (``batch_size=None``: all data per batch).

    ``clamp_batch_size`` (for evaluation data) reads a batch_size above the data's size as
    "all of it" instead of refusing it, and lets a DataLoader keep its own batches.
    """
    if isinstance(data, DataLoader):
        if batch_size is not None and not clamp_batch_size:
            raise ValueError(
                f"{name} is a DataLoader, which batches by itself: leave batch_size=None "
                f"(got batch_size={batch_size}) or pass the Dataset instead"
            )
        return LoaderBatches(data, device)
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        data = data.tensors
    if isinstance(data, Dataset):
        if clamp_batch_size and batch_size is not None and batch_size >= _length(data):
            batch_size = None
        return DatasetBatches(data, batch_size, seed, device, name, shuffle)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (_as_tensor(part, label, name) for part, label in zip(data, ("X", "y")))
        if clamp_batch_size and batch_size is not None and batch_size >= len(x):
            batch_size = None
        x, y = _check_arrays(x, y, batch_size, allow_integer_inputs, name)
        x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
        y = y.to(device=device, dtype=dtype if y.is_floating_point() else torch.int64)
        return TensorBatches(x, y, batch_size, seed, shuffle)
    raise TypeError(
        f"{name} must be a pair (X, y) of tensors or arrays, a torch Dataset or a DataLoader; "
        f"got {type(data).__name__}"
    )


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch``: a permutation of ``range(n)`` determined by (seed, epoch)."""
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])
    generator = torch.Generator().manual_seed(mixed & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randperm(n, generator=generator)


class TensorBatches:
    """Batches of in-memory tensors by indexing: the fast path, no per-batch Python objects."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int | None, seed: int, shuffle: bool
    ) -> None:
        self.x, self.y = x, y
        self.size = len(x)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.batches_per_epoch = 1 if batch_size is None else math.ceil(self.size / batch_size)
        self._epoch, self._order = -1, None

    def get(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_size is None:
            return self.x, self.y
        epoch, index = divmod(position, self.batches_per_epoch)
        start = index * self.batch_size
        if not self.shuffle:
            return self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]
        if epoch != self._epoch:
            order = epoch_permutation(self.size, self.seed, epoch)
            self._epoch, self._order = epoch, order.to(self.x.device)
        rows = self._order[start : start + self.batch_size]
        return self.x[rows], self.y[rows]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], position: int) -> None:
        pass


class DatasetBatches(TensorBatches):
    """A map-style Dataset of ``(x, y)`` items, batched in the same seeded order."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None,
        seed: int,
        device: torch.device,
        name: str,
        shuffle: bool,
    ) -> None:
        try:
            size = len(dataset)
        except TypeError:
            raise TypeError(
                f"{name} is a Dataset without a length (an IterableDataset?): wrap it in a "
                "DataLoader"
            ) from None
        if size == 0:
            raise ValueError(f"{name} is empty: the Dataset has 0 examples")
        if batch_size is not None and batch_size > size:
            raise ValueError(
                f"batch_size {batch_size} is larger than {name} ({size} examples); "
                f"use batch_size <= {size}, or None for batch gradient descent"
            )
        first = dataset[0]
        if not isinstance(first, (tuple, list)) or len(first) != 2:
            raise TypeError(f"{name} must yield (x, y) pairs; item 0 is {type(first).__name__}")
        self.dataset, self.device = dataset, device
        self.size = size
        self.batch_size = batch_size
        self.seed, self.shuffle = seed, shuffle
        self.batches_per_epoch = 1 if batch_size is None else math.ceil(size / batch_size)
        self._epoch, self._order = -1, None

    def get(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(position, self.batches_per_epoch)
        batch_size = self.batch_size or self.size
        if not self.shuffle:
            rows = range(index * batch_size, min(self.size, (index + 1) * batch_size))
        else:
            if epoch != self._epoch:
                self._epoch, self._order = epoch, epoch_permutation(self.size, self.seed, epoch)
            rows = self._order[index * batch_size : (index + 1) * batch_size].tolist()
        x, y = default_collate([self.dataset[i] for i in rows])
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


class LoaderBatches:
    """A DataLoader's batches in its own order, read in sequence.

    For an exact resume the RNG states at the start of each epoch are kept (the loader's
    shuffle draws from them when its iterator is made); resuming restores them, makes the
    iterator again and skips to the position by reading the batches before it. A dataset
    whose ``__getitem__`` draws from torch's global RNG in the main process (random
    augmentation with ``num_workers=0``) therefore resumes with different draws; the
    ``(X, y)`` and ``Dataset`` paths do not read skipped batches at all.
    """

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        try:
            self.batches_per_epoch = len(loader)
        except TypeError:
            raise TypeError(
                "train_data is a DataLoader without a length: exact epochs and resume need "
                "len(loader); give the Dataset a __len__"
            ) from None
        if self.batches_per_epoch == 0:
            raise ValueError("train_data is empty: the DataLoader yields no batches")
        self.loader, self.device = loader, device
        self.batch_size = loader.batch_size
        self._iterator, self._next = None, 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._epoch_start: dict[str, Any] = {}

    def get(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        if position in self._cache:
            return self._cache[position]
        if position < self._next:
            raise ValueError(f"a DataLoader is read in order: position {position} is behind")
        while self._next <= position:
            self._cache = {self._next: self._fetch()}
            self._next += 1
        return self._cache[position]

    def _fetch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._next % self.batches_per_epoch == 0 or self._iterator is None:
            self._epoch_start = _loader_rng_state(self.loader)
            self._iterator = iter(self.loader)
        batch = next(self._iterator)
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"the DataLoader must yield (x, y) pairs, got {type(batch).__name__}")
        x, y = batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_start_rng": self._epoch_start}

    def load_state_dict(self, state: dict[str, Any], position: int) -> None:
        """Re-create the iterator of ``position``'s epoch and skip to it (RNG restored after)."""
        start = position - position % self.batches_per_epoch
        if state.get("epoch_start_rng"):
            _set_loader_rng_state(self.loader, state["epoch_start_rng"])
        self._epoch_start = _loader_rng_state(self.loader)
        self._iterator, self._cache, self._next = iter(self.loader), {}, start
        for _ in range(position - start):
            next(self._iterator)
            self._next += 1


def _loader_rng_state(loader: DataLoader) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if loader.generator is not None:
        state["loader"] = loader.generator.get_state()
    return state


def _set_loader_rng_state(loader: DataLoader, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "loader" in state and loader.generator is not None:
        loader.generator.set_state(state["loader"])


def _length(dataset: Dataset) -> int:
    try:
        return len(dataset)
    except TypeError:
        return 0


def _as_tensor(part: Any, label: str, name: str) -> torch.Tensor:
    if isinstance(part, torch.Tensor):
        return part
    if isinstance(part, np.ndarray):
        if part.dtype == object or not (
            np.issubdtype(part.dtype, np.number) or part.dtype == np.bool_
        ):
            raise TypeError(f"{name}: {label} must hold numbers, got dtype {part.dtype}")
        return torch.from_numpy(np.ascontiguousarray(part))
    raise TypeError(f"{name}: {label} must be a tensor or a numpy array, got {type(part).__name__}")


def _check_arrays(
    x: torch.Tensor, y: torch.Tensor, batch_size: int | None, allow_integer_inputs: bool, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() == 0 or y.dim() == 0:
        raise ValueError(f"{name}: X and y need a first (example) dimension, got scalars")
    if len(x) != len(y):
        raise ValueError(
            f"{name}: X and y have different lengths: {len(x)} examples in X, {len(y)} in y"
        )
    if len(x) == 0:
        raise ValueError(f"{name} is empty: X and y have 0 examples")
    if batch_size is not None and batch_size > len(x):
        raise ValueError(
            f"batch_size {batch_size} is larger than {name} ({len(x)} examples); "
            f"use batch_size <= {len(x)}, or None for batch gradient descent"
        )
    if not x.is_floating_point() and not allow_integer_inputs:
        raise ValueError(
            f"{name}: X has integer dtype {x.dtype}: features must be floating point "
            "(convert with X.float()); for token ids or indices pass allow_integer_inputs=True"
        )
    for label, part in (("X", x), ("y", y)):
        # A finite sum rules out NaN and inf entries at a fraction of isfinite's cost; only a
        # non-finite sum (bad entries, or an overflow) needs the entry-by-entry count.
        if part.is_floating_point() and not bool(torch.isfinite(part.sum())):
            bad = int((~torch.isfinite(part)).sum())
            if bad:
                raise ValueError(
                    f"{name}: {label} contains NaN or inf in {bad} entries; "
                    "clean or impute them before training"
                )
    return x, y
