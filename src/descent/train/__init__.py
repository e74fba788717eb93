"""One training loop for every workload, and descent on plain functions."""

from descent.train.checkpoint import CheckpointError, load_checkpoint
from descent.train.config import TrainConfig
from descent.train.guard import DivergenceError
from descent.train.logging import History, plot_run, read_metrics
from descent.train.loop import TrainingInterrupted, fit
from descent.train.lr_range import LRRangeResult, lr_range_test, plot_lr_range
from descent.train.minimize import Trajectory, minimize

__all__ = [
    "CheckpointError",
    "DivergenceError",
    "History",
    "LRRangeResult",
    "TrainConfig",
    "TrainingInterrupted",
    "Trajectory",
    "fit",
    "load_checkpoint",
    "lr_range_test",
    "minimize",
    "plot_lr_range",
    "plot_run",
    "read_metrics",
]
