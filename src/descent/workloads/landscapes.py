"""Two-dimensional test functions with known minima, to watch a descent happen."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Landscape:
    """A differentiable function of a 2-vector, with its known minima and a view to draw it.

    Attributes:
        name: registry key.
        fn: maps a tensor of shape ``(2,)`` (or ``(..., 2)``) to the value(s).
        minima: every global minimum (and, for Himmelblau, the four equal ones); empty when
            the function is unbounded below.
        start: a conventional starting point.
        bounds: ``((x_min, x_max), (y_min, y_max))`` for plots.
        log_scale: draw contours on a log scale (for steep valleys).
        note: one line on what the function tests.
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    minima: tuple[tuple[float, float], ...]
    start: tuple[float, float]
    bounds: tuple[tuple[float, float], tuple[float, float]]
    log_scale: bool = False
    note: str = ""

    def __call__(self, xy: torch.Tensor) -> torch.Tensor:
        return self.fn(xy)

    def nearest_minimum(self, point: torch.Tensor | tuple[float, float]) -> tuple[tuple, float]:
        """The closest known minimum to ``point`` and the Euclidean distance to it.

        Raises ValueError for a landscape without minima (the saddle).
        """
        if not self.minima:
            raise ValueError(f"{self.name} has no minimum (it is unbounded below)")
        point = torch.as_tensor(point, dtype=torch.float64)
        distances = [
            float(torch.dist(point, torch.tensor(m, dtype=torch.float64))) for m in self.minima
        ]
        best = min(range(len(distances)), key=distances.__getitem__)
        return self.minima[best], distances[best]


def _split(xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return xy[..., 0], xy[..., 1]


def rosenbrock(xy: torch.Tensor) -> torch.Tensor:
    """(1 - x)^2 + 100 (y - x^2)^2: a curved, narrow valley; minimum 0 at (1, 1)."""
    x, y = _split(xy)
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def beale(xy: torch.Tensor) -> torch.Tensor:
    """Beale's function: flat plateaus and sharp ridges; minimum 0 at (3, 0.5)."""
    x, y = _split(xy)
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def himmelblau(xy: torch.Tensor) -> torch.Tensor:
    """(x^2 + y - 11)^2 + (x + y^2 - 7)^2: four equal minima of value 0."""
    x, y = _split(xy)
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def saddle(xy: torch.Tensor) -> torch.Tensor:
    """x^2 - y^2: a saddle at the origin, unbounded below along y; gradient descent must escape."""
    x, y = _split(xy)
    return x**2 - y**2


def rastrigin(xy: torch.Tensor) -> torch.Tensor:
    """20 + sum(x_i^2 - 10 cos(2 pi x_i)): many local minima; global minimum 0 at the origin."""
    return 20 + (xy**2 - 10 * torch.cos(2 * math.pi * xy)).sum(-1)


# A quadratic with condition number 100 whose axes are rotated by 30 degrees, so that a
# per-coordinate preconditioner (Adam, Sophia) cannot undo the conditioning for free.
_ANGLE = math.pi / 6
_ROTATION = ((math.cos(_ANGLE), -math.sin(_ANGLE)), (math.sin(_ANGLE), math.cos(_ANGLE)))
CONDITION_NUMBER = 100.0


def ill_conditioned(xy: torch.Tensor) -> torch.Tensor:
    """0.5 (u^2 + 100 v^2) in axes rotated by 30 degrees: minimum 0 at the origin."""
    x, y = _split(xy)
    u = _ROTATION[0][0] * x + _ROTATION[1][0] * y
    v = _ROTATION[0][1] * x + _ROTATION[1][1] * y
    return 0.5 * (u**2 + CONDITION_NUMBER * v**2)


LANDSCAPES: dict[str, Landscape] = {
    landscape.name: landscape
    for landscape in (
        Landscape(
            "rosenbrock",
            rosenbrock,
            ((1.0, 1.0),),
            (-1.5, 2.0),
            ((-2.0, 2.0), (-1.0, 3.0)),
            log_scale=True,
            note="curved narrow valley",
        ),
        Landscape(
            "beale",
            beale,
            ((3.0, 0.5),),
            (1.0, 1.5),
            ((-4.5, 4.5), (-4.5, 4.5)),
            log_scale=True,
            note="plateaus and sharp ridges",
        ),
        Landscape(
            "himmelblau",
            himmelblau,
            (
                (3.0, 2.0),
                (-2.805118086952745, 3.131312518250573),
                (-3.779310253377747, -3.283185991286170),
                (3.584428340330492, -1.848126526964404),
            ),
            (0.0, 0.0),
            ((-5.0, 5.0), (-5.0, 5.0)),
            log_scale=True,
            note="four equal minima: which one a start leads to",
        ),
        Landscape(
            "saddle",
            saddle,
            (),
            (1.0, 1e-3),
            ((-2.0, 2.0), (-2.0, 2.0)),
            note="saddle point at the origin, no minimum",
        ),
        Landscape(
            "rastrigin",
            rastrigin,
            ((0.0, 0.0),),
            (2.2, -2.7),
            ((-5.12, 5.12), (-5.12, 5.12)),
            note="many local minima around the global one",
        ),
        Landscape(
            "ill_conditioned",
            ill_conditioned,
            ((0.0, 0.0),),
            (-1.5, 1.0),
            ((-2.0, 2.0), (-2.0, 2.0)),
            log_scale=True,
            note="rotated quadratic, condition number 100",
        ),
    )
}


def get_landscape(name: str) -> Landscape:
    """The landscape registered as ``name``; ValueError listing the names otherwise."""
    if name not in LANDSCAPES:
        raise ValueError(f"Unknown landscape {name!r}; allowed: {', '.join(LANDSCAPES)}")
    return LANDSCAPES[name]
