"""descent: training models by gradient descent on PyTorch."""

from descent.optim import OPTIMIZERS, Lion, Sophia, create_optimizer
from descent.train import History, TrainConfig, Trajectory, fit, lr_range_test, minimize

__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS",
    "History",
    "Lion",
    "Sophia",
    "TrainConfig",
    "Trajectory",
    "__version__",
    "create_optimizer",
    "fit",
    "lr_range_test",
    "minimize",
]
