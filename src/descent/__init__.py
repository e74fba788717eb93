"""descent: training models by gradient descent on PyTorch."""

from descent.optim import OPTIMIZERS, Lion, Sophia, create_optimizer
from descent.train import Trajectory, minimize

__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS",
    "Lion",
    "Sophia",
    "Trajectory",
    "__version__",
    "create_optimizer",
    "minimize",
]
