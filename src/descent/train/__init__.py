"""One training loop for every workload, and descent on plain functions."""

from descent.train.checkpoint import CheckpointError, load_checkpoint
from descent.train.config import TrainConfig
from descent.train.guard import DivergenceError
from descent.train.logging import History, plot_run
from descent.train.loop import TrainingInterrupted, fit
from descent.train.minimize import Trajectory, minimize

__all__ = [
    "CheckpointError",
    "DivergenceError",
    "History",
    "TrainConfig",
    "TrainingInterrupted",
    "Trajectory",
    "fit",
    "load_checkpoint",
    "minimize",
    "plot_run",
]
