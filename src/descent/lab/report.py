"""Figures for what descent measures: trajectories over a landscape, curves over steps."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from descent.figures import pyplot, save_figure
from descent.train.minimize import Trajectory
from descent.workloads.landscapes import Landscape


def plot_trajectories(
    landscape: Landscape,
    trajectories: Mapping[str, Trajectory],
    path: str | os.PathLike,
    *,
    resolution: int = 300,
) -> Path:
    """Draw each trajectory over the contours of ``landscape`` and save a PNG atomically.

    The start is a circle, the end a cross, the known minima are stars.
    """
    from matplotlib.colors import LogNorm

    plt = pyplot()

    # The view grows to show where the trajectories go, but by at most the landscape's own
    # width on each side: a diverging run would otherwise zoom out to 1e150.
    (x_low, x_high), (y_low, y_high) = landscape.bounds
    x_min, x_max, y_min, y_max = x_low, x_high, y_low, y_high
    for trajectory in trajectories.values():
        finite = trajectory.path[np.isfinite(trajectory.path).all(axis=1)]
        x_min, x_max = min(x_min, finite[:, 0].min()), max(x_max, finite[:, 0].max())
        y_min, y_max = min(y_min, finite[:, 1].min()), max(y_max, finite[:, 1].max())
    width, height = x_high - x_low, y_high - y_low
    x_min, x_max = max(x_min, x_low - width), min(x_max, x_high + width)
    y_min, y_max = max(y_min, y_low - height), min(y_max, y_high + height)
    xs = torch.linspace(x_min, x_max, resolution, dtype=torch.float64)
    ys = torch.linspace(y_min, y_max, resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    values = landscape(grid).numpy()

    figure, axes = plt.subplots(figsize=(7, 6))
    if landscape.log_scale:
        shifted = values - values.min() + 1e-3
        levels = np.geomspace(shifted.min(), shifted.max(), 30)
        contour = axes.contourf(xs, ys, shifted, levels=levels, norm=LogNorm(), cmap="viridis")
    else:
        contour = axes.contourf(xs, ys, values, levels=30, cmap="viridis")
    colorbar = figure.colorbar(contour, ax=axes)
    if landscape.log_scale:
        from matplotlib.ticker import LogLocator

        colorbar.locator = LogLocator()
        colorbar.update_ticks()
        colorbar.set_label("f(x, y) - min f + 1e-3 (log scale)")
    else:
        colorbar.set_label("f(x, y)")
    for minimum in landscape.minima:
        axes.plot(
            *minimum, marker="*", markersize=14, color="white", markeredgecolor="black", zorder=5
        )
    for label, trajectory in trajectories.items():
        points = trajectory.path
        (line,) = axes.plot(points[:, 0], points[:, 1], linewidth=1.4, alpha=0.85, label=label)
        axes.plot(*points[0], marker="o", color=line.get_color(), markeredgecolor="black")
        axes.plot(*points[-1], marker="X", markersize=9, color=line.get_color())
    axes.set(xlim=(x_min, x_max), ylim=(y_min, y_max), xlabel="x", ylabel="y", title=landscape.name)
    axes.legend(loc="upper right")
    return save_figure(figure, path)
