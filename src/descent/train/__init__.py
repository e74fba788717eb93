"""One training loop for every workload, and descent on plain functions."""

from descent.train.minimize import Trajectory, minimize

__all__ = ["Trajectory", "minimize"]
