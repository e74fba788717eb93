"""Saving matplotlib figures: headless, atomic, closed afterwards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save ``figure`` as PNG through a temporary file and a rename, then close it.

    A reader never sees a half-written image, and an existing one survives a failed save.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Opened like any new file (not mkstemp, which is private to the owner): the image gets
    # the permissions the user's umask gives.
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(temporary, target)
    finally:
        pyplot().close(figure)
        temporary.unlink(missing_ok=True)
    return target
