"""PNG output: atomic, and with the permissions a user expects."""

from __future__ import annotations

import os
import stat

import pytest

from descent.figures import pyplot, save_figure


def test_saved_figure_follows_the_umask_and_leaves_no_temporary(tmp_path):
    previous = os.umask(0o022)
    try:
        figure = pyplot().figure()
        path = save_figure(figure, tmp_path / "out" / "plot.png")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in path.parent.iterdir()] == ["plot.png"]


def test_a_failed_save_keeps_the_previous_image(tmp_path):
    path = save_figure(pyplot().figure(), tmp_path / "plot.png")
    before = path.read_bytes()
    figure = pyplot().figure()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    figure.savefig = broken
    with pytest.raises(OSError, match="disk full"):
        save_figure(figure, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
