"""What ``descent lr-find`` and ``descent plot`` do, as plain functions the CLI wires up.

Each takes simple arguments, prints with rich and returns what it made, so it can be called
(and tested) without the command line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from descent.train.config import TrainConfig
from descent.train.logging import History, plot_run
from descent.train.loop import fit
from descent.train.lr_range import LRRangeResult, lr_range_test, plot_lr_range

TASKS = ("regression", "classification")
MODELS = ("linear", "mlp")


def load_table(path: str | Path, target: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features and target from a ``.npz`` (arrays ``X`` and ``y``) or a numeric ``.csv``.

    For a CSV with a header, ``target`` names the target column (default: the last one);
    without a header the last column is the target.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file not found: {path}")
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            missing = {"X", "y"} - set(arrays.files)
            if missing:
                raise ValueError(f"{path} needs arrays X and y; it lacks {', '.join(missing)}")
            return arrays["X"], arrays["y"]
    if path.suffix != ".csv":
        raise ValueError(f"unsupported data file {path.name}: use .npz (X, y) or .csv")
    with path.open(encoding="utf-8") as file:
        first = file.readline().strip().split(",")
    has_header = any(not _is_number(cell) for cell in first)
    table = np.loadtxt(path, delimiter=",", skiprows=1 if has_header else 0, ndmin=2)
    column = table.shape[1] - 1
    if target is not None:
        if not has_header or target not in first:
            raise ValueError(f"target column {target!r} not found in the header of {path}")
        column = first.index(target)
    return np.delete(table, column, axis=1), table[:, column]


def check_task(task: str) -> None:
    """Refuse a task other than regression or classification, naming both."""
    if task not in TASKS:
        raise ValueError(f"Invalid task: {task!r} (allowed: {', '.join(TASKS)})")


def task_targets(task: str, targets: np.ndarray) -> tuple[torch.Tensor, int, nn.Module, dict]:
    """Targets as a tensor, the model's output width, the loss and a validation metric.

    Classification: labels become class indices (cross-entropy, accuracy); regression:
    float columns (mean squared error, RMSE). ``task`` is one :func:`check_task` accepted.
    """
    if task == "classification":
        classes, labels = np.unique(targets, return_inverse=True)
        y = torch.as_tensor(labels, dtype=torch.int64)
        metrics = {"accuracy": lambda out, t: (out.argmax(1) == t).double().mean()}
        return y, len(classes), nn.CrossEntropyLoss(), metrics
    y = torch.as_tensor(targets, dtype=torch.float32).reshape(len(targets), -1)
    metrics = {"rmse": lambda out, t: ((out - t) ** 2).mean().sqrt()}
    return y, y.shape[1], nn.MSELoss(), metrics


def build_model(features: int, outputs: int, model: str = "linear", hidden: int = 64) -> nn.Module:
    """A linear model or a one-hidden-layer ReLU MLP."""
    if model not in MODELS:
        raise ValueError(f"Invalid model: {model!r} (allowed: {', '.join(MODELS)})")
    if model == "linear":
        return nn.Linear(features, outputs)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


def lr_find_command(
    data: str | Path,
    task: str = "regression",
    model: str = "linear",
    hidden: int = 64,
    optimizer: str = "sgd",
    batch_size: int | None = 32,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    steps: int = 100,
    out: str | Path = "lr_find.png",
    seed: int = 0,
    target: str | None = None,
    config: str | Path | None = None,
    console: Console | None = None,
) -> LRRangeResult:
    """Run the lr range test on a data file; print the curve and the suggestion, save a PNG.

    ``config`` (a TOML TrainConfig) overrides optimizer, batch_size and seed when given.
    """
    console = console or Console()
    check_task(task)
    features, targets = load_table(data, target)
    features = features.astype(np.float32)
    y, outputs, loss_fn, _ = task_targets(task, targets)
    if config is not None:
        train_config = dataclasses.replace(TrainConfig.from_toml(config), epochs=None, steps=steps)
    else:
        n = len(features)
        train_config = TrainConfig(
            optimizer=optimizer,
            batch_size=None if batch_size is None else min(batch_size, n),
            steps=steps,
            seed=seed,
        )
    torch.manual_seed(train_config.seed)
    network = build_model(features.shape[1], outputs, model, hidden)
    result = lr_range_test(
        network,
        (torch.as_tensor(features), y),
        loss_fn,
        train_config,
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
    )
    table = Table(title=f"lr range test ({train_config.optimizer}, {len(result.lrs)} steps)")
    table.add_column("lr", justify="right")
    table.add_column("smoothed loss", justify="right")
    for index in np.unique(np.linspace(0, len(result.lrs) - 1, 12).astype(int)):
        table.add_row(f"{result.lrs[index]:.3g}", f"{result.losses[index]:.4g}")
    console.print(table)
    path = plot_lr_range(result, out)
    note = " (stopped: the loss diverged)" if result.diverged else ""
    console.print(f"suggested lr: [bold]{result.suggested_lr:.3g}[/bold]{note}")
    console.print(f"plot written to {path}")
    return result


def train_command(
    data: str | Path,
    config: str | Path | None = None,
    task: str = "regression",
    model: str = "linear",
    hidden: int = 64,
    val_fraction: float = 0.2,
    standardize: bool = True,
    target: str | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    console: Console | None = None,
) -> History:
    """Train a linear model or an MLP on a data file with :func:`fit`; print the result.

    The rows are split once, by the config's seed, into training and validation parts
    (``val_fraction``); features are standardised with the training part's mean and spread.
    ``overrides`` replace config fields (``{"lr": 0.1, "epochs": 5}``); without a config
    file the defaults are TrainConfig's with 20 epochs. ``resume=True`` continues the run
    in the config's ``run_dir`` from its newest checkpoint.
    """
    console = console or Console()
    check_task(task)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"Invalid val_fraction: {val_fraction} (allowed: 0 <= val_fraction < 1)")
    values = TrainConfig.from_toml(config).to_dict() if config is not None else {"epochs": 20}
    values.update(overrides or {})
    if "steps" in (overrides or {}) and "epochs" not in (overrides or {}):
        values["epochs"] = None
    train_config = TrainConfig.from_dict(values)
    if resume and train_config.run_dir is None:
        raise ValueError("resume needs run_dir in the config (or --set run_dir=...)")

    features, targets = load_table(data, target)
    features = features.astype(np.float32)
    order = np.random.default_rng(train_config.seed).permutation(len(features))
    n_val = round(val_fraction * len(features))
    val_rows, train_rows = order[:n_val], order[n_val:]
    if standardize:
        mean = features[train_rows].mean(0)
        spread = features[train_rows].std(0)
        features = (features - mean) / np.where(spread > 0, spread, 1.0)
    y, outputs, loss_fn, metrics = task_targets(task, targets)
    x = torch.as_tensor(features)
    train_rows_t, val_rows_t = torch.as_tensor(train_rows), torch.as_tensor(val_rows)
    val_data = (x[val_rows_t], y[val_rows_t]) if n_val else None

    torch.manual_seed(train_config.seed)
    network = build_model(features.shape[1], outputs, model, hidden)
    history = fit(
        network,
        (x[train_rows_t], y[train_rows_t]),
        loss_fn,
        train_config,
        val_data=val_data,
        metrics=metrics if n_val else None,
        resume=train_config.run_dir if resume else None,
    )
    table = Table(title=f"{train_config.optimizer} on {Path(data).name} ({task}, {model})")
    table.add_column("")
    table.add_column("value", justify="right")
    last = history.records[-1] if history.records else {}
    table.add_row("steps", str(last.get("step", 0)))
    table.add_row("train loss (last logged)", f"{last.get('loss', float('nan')):.6g}")
    if history.evaluations:
        for name, value in history.evaluations[-1].items():
            if name not in ("step", "epoch"):
                table.add_row(f"validation {name}", f"{value:.6g}")
    table.add_row("seconds", f"{history.seconds:.3g}")
    table.add_row("rollbacks", str(len(history.rollbacks)))
    console.print(table)
    if train_config.run_dir is not None:
        console.print(
            f"run directory: {train_config.run_dir} (descent plot {train_config.run_dir})"
        )
    return history


def plot_command(
    run_dir: str | Path, out: str | Path | None = None, console: Console | None = None
) -> Path:
    """Draw a run directory's loss, lr and metric curves to a PNG (default RUN_DIR/curves.png)."""
    console = console or Console()
    path = plot_run(run_dir, out)
    console.print(f"plot written to {path}")
    return path


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
