"""Saving matplotlib figures: headless, atomic, closed afterwards."""

from __future__ import annotations

import os
import tempfile
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
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".png.tmp")
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(temporary, target)
    finally:
        pyplot().close(figure)
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target
