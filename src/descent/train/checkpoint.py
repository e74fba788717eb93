"""Checkpoints: one file per save, written atomically, read back with errors that say what is wrong.

A checkpoint is one dict (model, optimizer, scheduler, every RNG state, step, data position,
config, History, ...) saved with ``torch.save`` and read with ``weights_only=True``. The file
is written to a temporary name in the same folder, flushed, fsync'ed and renamed over the
final name (``os.replace``, atomic on POSIX), so a process killed mid-write leaves the
previous checkpoints intact and never a half-written ``step_*.pt``.
"""

from __future__ import annotations

import os
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "descent-checkpoint-1"
_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, truncated or for another run."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` so that ``path`` is either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with temporary.open("wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def write_checkpoint(run_dir: str | Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    """Save ``payload`` as ``run_dir/checkpoints/step_<step>.pt`` and keep the newest ``keep``."""
    folder = checkpoint_dir(run_dir)
    path = save_atomic({"format": FORMAT, **payload}, folder / f"step_{step:09d}.pt")
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in folder.glob(".step_*.tmp-*"):  # left by a process killed mid-write
        if not stale.name.endswith(f".tmp-{os.getpid()}"):
            stale.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The ``step_*.pt`` files in ``folder``, oldest first (temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file itself, or the newest one in a run directory or checkpoints folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    found = list_checkpoints(checkpoint_dir(path)) or list_checkpoints(path)
    if not found:
        raise CheckpointError(f"no checkpoint (step_*.pt) in {path} or {checkpoint_dir(path)}")
    return found[-1]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (file or run directory), telling corrupt from truncated from foreign."""
    path = find_checkpoint(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        with path.open("rb") as file:
            head = file.read(4)
        if head.startswith(b"PK") and not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"checkpoint {path} is truncated (its archive has no end: the write was cut "
                f"short); use an earlier checkpoint from {path.parent}"
            ) from error
        raise CheckpointError(
            f"checkpoint {path} is corrupt (it cannot be read as a torch.save file: {error})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a descent checkpoint (expected format {FORMAT!r}); "
            "fit(resume=...) needs a file written by fit"
        )
    payload["path"] = str(path)
    return payload


def check_matches(
    checkpoint: dict[str, Any], model: torch.nn.Module, optimizer_name: str, batch_size: Any
) -> None:
    """Raise CheckpointError when ``checkpoint`` belongs to another model, optimizer or batching."""
    path = checkpoint["path"]
    if checkpoint["optimizer_name"] != optimizer_name:
        raise CheckpointError(
            f"checkpoint {path} holds the state of optimizer {checkpoint['optimizer_name']!r}; "
            f"this run uses {optimizer_name!r}"
        )
    saved = checkpoint["model"]
    current = model.state_dict()
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    reshaped = sorted(
        f"{k} {tuple(saved[k].shape)} vs {tuple(current[k].shape)}"
        for k in set(saved) & set(current)
        if saved[k].shape != current[k].shape
    )
    if missing or unexpected or reshaped:
        details = "; ".join(
            f"{label}: {', '.join(items)}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", reshaped),
            )
            if items
        )
        raise CheckpointError(f"checkpoint {path} was written for another model ({details})")
    saved_batch = checkpoint["config"].get("batch_size")
    if saved_batch != batch_size:
        raise CheckpointError(
            f"checkpoint {path} was written with batch_size={saved_batch}; this run uses "
            f"batch_size={batch_size}, so its data positions would not match"
        )


def rng_states() -> dict[str, Any]:
    """Every global RNG state a model, a loss or a data pipeline may draw from."""
    keys, position, has_gauss, cached = np.random.get_state()[1:]
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fsync_directory(folder: Path) -> None:
    # The rename itself must reach the disk; not every platform lets a folder be opened.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
