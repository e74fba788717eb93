"""What a run records (History) and where it goes: JSONL, TensorBoard, a progress bar, plots."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from descent.figures import pyplot, save_figure

METRICS_FILE = "metrics.jsonl"


@dataclass
class History:
    """The record of one :func:`~descent.train.fit` run.

    Attributes:
        records: one dict per logged step: ``step`` (optimizer steps done), ``epoch``
            (fractional passes over the data), ``loss``, ``lr`` (as applied, guard cut
            included), ``grad_norm`` (before clipping), ``seconds`` (training time so far),
            ``examples_per_second`` and, for optimizers that have it, ``win_rate``.
        evaluations: one dict per evaluation: ``step``, ``epoch``, ``val_loss`` and each metric.
        rollbacks: one dict per divergence-guard rollback: ``step``, ``reason``,
            ``restored_step``, ``lr_scale``.
        gradient_evaluations: forward/backward passes, curvature passes included.
        seconds: wall time of the run (curvature passes, evaluations and checkpoints
            included), summed over resumed sessions.
        stop_reason: ``"completed"``, ``"early_stopping"`` or ``"interrupted"``.
        best: the best evaluation by the config's monitor, or None.
        restarts: with ``restarts > 1``, one summary per start (``seed``, ``best``).
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    gradient_evaluations: int = 0
    seconds: float = 0.0
    stop_reason: str = "completed"
    best: dict[str, Any] | None = None
    restarts: list[dict[str, Any]] = field(default_factory=list)

    def column(self, name: str, source: str = "records") -> np.ndarray:
        """One field across records (or ``source="evaluations"``) as an array, NaN where absent."""
        rows = getattr(self, source)
        return np.array([row.get(name, math.nan) for row in rows], dtype=np.float64)

    @property
    def losses(self) -> np.ndarray:
        return self.column("loss")

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "evaluations": self.evaluations,
            "rollbacks": self.rollbacks,
            "gradient_evaluations": self.gradient_evaluations,
            "seconds": self.seconds,
            "stop_reason": self.stop_reason,
            "best": self.best,
            "restarts": self.restarts,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> History:
        return cls(**values)


class RunLogger:
    """Sends records to the sinks a config asks for: JSONL and TensorBoard in ``run_dir``,
    and a rich progress bar on a terminal or plain lines otherwise."""

    def __init__(
        self,
        run_dir: str | None,
        total_steps: int,
        progress: str,
        tensorboard: bool,
        history: History,
    ) -> None:
        self.total_steps = total_steps
        self._jsonl = None
        self._writer = None
        self._progress = None
        self._task = None
        if run_dir is not None:
            folder = Path(run_dir)
            folder.mkdir(parents=True, exist_ok=True)
            # Rewritten from the History, so a resumed run holds no lines from past the checkpoint.
            self._jsonl = (folder / METRICS_FILE).open("w", encoding="utf-8")
            for kind, rows in (
                ("step", history.records),
                ("eval", history.evaluations),
                ("rollback", history.rollbacks),
            ):
                for row in rows:
                    self._write_line(kind, row)
            self._jsonl.flush()
            if tensorboard:
                self._writer = _summary_writer(folder / "tensorboard")
        self._console = None
        if progress == "auto":
            progress = "bar" if self.console.is_terminal else "lines"
        self.mode = progress
        if progress == "bar":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            done = history.records[-1]["step"] if history.records else 0
            self._task = self._progress.add_task(
                "training", total=total_steps, completed=done, status=""
            )
            self._progress.start()

    @property
    def console(self) -> Any:
        if self._console is None:  # made on first use: a silent run never builds one
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def step(self, record: dict[str, Any]) -> None:
        self._write_line("step", record)
        if self._writer is not None:
            for key in ("loss", "lr", "grad_norm", "examples_per_second", "win_rate"):
                if key in record:
                    self._writer.add_scalar(f"train/{key}", record[key], record["step"])
        status = f"loss {record['loss']:.4g}  lr {record['lr']:.3g}"
        if self._progress is not None:
            self._progress.update(self._task, completed=record["step"], status=status)
        elif self.mode == "lines":
            print(
                f"step {record['step']}/{self.total_steps}  epoch {record['epoch']:.2f}  "
                f"{status}  grad {record['grad_norm']:.3g}  "
                f"{record['examples_per_second']:.0f} ex/s",
                file=sys.stderr,
            )

    def evaluation(self, record: dict[str, Any]) -> None:
        self._write_line("eval", record)
        values = {k: v for k, v in record.items() if k not in ("step", "epoch", "seconds")}
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(f"eval/{key}", value, record["step"])
        if self.mode != "none":
            text = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
            self.message(f"eval at step {record['step']}: {text}")

    def rollback(self, record: dict[str, Any]) -> None:
        self._write_line("rollback", record)
        self.message(
            f"divergence at step {record['step']}: {record['reason']}; rolled back to step "
            f"{record['restored_step']}, lr scale now {record['lr_scale']:g}",
            force=True,
        )

    def message(self, text: str, force: bool = False) -> None:
        if self.mode == "none" and not force:
            return
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr)

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _write_line(self, kind: str, record: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"kind": kind, "time": time.time(), **record}) + "\n")


def _summary_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ModuleNotFoundError(
            "tensorboard=True needs the tensorboard package: pip install 'descent[tensorboard]'"
        ) from error
    return SummaryWriter(log_dir=str(folder))


def read_metrics(run_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The records of ``run_dir/metrics.jsonl`` grouped by kind (step, eval, rollback)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ValueError(f"no {METRICS_FILE} in {run_dir}: is it a run directory written by fit?")
    grouped: dict[str, list[dict[str, Any]]] = {"step": [], "eval": [], "rollback": []}
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}, line {number}: not valid JSON") from None
            grouped.setdefault(row.get("kind", "step"), []).append(row)
    return grouped


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw loss, lr and evaluation metrics against steps to a PNG; return its path.

    ``out`` defaults to ``run_dir/curves.png``.
    """
    plt = pyplot()

    grouped = read_metrics(run_dir)
    steps, evaluations = grouped["step"], grouped["eval"]
    if not steps and not evaluations:
        raise ValueError(f"{Path(run_dir) / METRICS_FILE} holds no records to plot")
    metric_names = sorted(
        {k for row in evaluations for k in row if k not in ("kind", "time", "step", "epoch")}
    )
    panels = 2 + len(metric_names)
    figure, axes = plt.subplots(panels, 1, figsize=(7, 2.4 * panels), sharex=True, squeeze=False)
    axes = axes[:, 0]
    x = [row["step"] for row in steps]
    losses = [row["loss"] for row in steps]
    axes[0].plot(x, losses, label="train loss")
    if evaluations and "val_loss" in metric_names:
        axes[0].plot(
            [row["step"] for row in evaluations],
            [row.get("val_loss", math.nan) for row in evaluations],
            "o-",
            label="val loss",
        )
    if losses and all(v > 0 for v in losses if math.isfinite(v)):
        axes[0].set_yscale("log")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].plot(x, [row["lr"] for row in steps])
    axes[1].set_ylabel("lr")
    for row in grouped["rollback"]:
        for axis in axes:
            axis.axvline(row["step"], color="red", alpha=0.3)
    for axis, name in zip(axes[2:], metric_names):
        axis.plot(
            [row["step"] for row in evaluations],
            [row.get(name, math.nan) for row in evaluations],
            "o-",
        )
        axis.set_ylabel(name)
    axes[-1].set_xlabel("step")
    figure.tight_layout()
    out = Path(out) if out is not None else Path(run_dir) / "curves.png"
    return save_figure(figure, out, dpi=100)
