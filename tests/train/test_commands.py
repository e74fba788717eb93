"""The functions behind ``descent lr-find`` and ``descent plot``."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch.nn.functional as F
from rich.console import Console

from descent.train import TrainConfig, fit
from descent.train.commands import load_table, lr_find_command, plot_command
from tests.train.problems import least_squares, linear_model


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=100), buffer


def test_lr_find_on_a_csv_prints_the_suggestion_and_saves_the_plot(tmp_path):
    x, y, _ = least_squares()
    path = tmp_path / "data.csv"
    header = "a,b,c,d,target"
    np.savetxt(path, np.hstack([x.numpy(), y.numpy()]), delimiter=",", header=header, comments="")
    console, buffer = _console()
    out = tmp_path / "lr.png"
    result = lr_find_command(
        path, target="target", batch_size=None, start_lr=1e-4, steps=60, out=out, console=console
    )
    text = buffer.getvalue()
    assert f"suggested lr: {result.suggested_lr:.3g}" in text
    assert "lr range test (sgd" in text and str(out) in text.replace("\n", "")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_lr_find_classification_from_npz_with_a_toml_config(tmp_path):
    generator = np.random.default_rng(0)
    features = generator.normal(size=(120, 5))
    labels = np.where(features[:, 0] > 0, 7, 3)  # class codes need not be 0..k-1
    np.savez(tmp_path / "data.npz", X=features, y=labels)
    (tmp_path / "train.toml").write_text(
        'optimizer = "adam"\nbatch_size = 20\nepochs = 3\n', encoding="utf-8"
    )
    console, buffer = _console()
    result = lr_find_command(
        tmp_path / "data.npz",
        task="classification",
        model="mlp",
        hidden=8,
        config=tmp_path / "train.toml",
        steps=40,
        out=tmp_path / "lr.png",
        console=console,
    )
    assert "lr range test (adam" in buffer.getvalue()
    assert len(result.lrs) > 5


def test_load_table_reads_a_headerless_csv_with_the_target_last(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("1,2,3\n4,5,6\n", encoding="utf-8")
    features, target = load_table(path)
    assert features.tolist() == [[1, 2], [4, 5]] and target.tolist() == [3, 6]


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "message"),
    [
        ("data.txt", "1,2\n", {}, r"unsupported data file data.txt"),
        ("data.csv", "a,b\n1,2\n", {"target": "c"}, r"target column 'c' not found"),
    ],
)
def test_load_table_refuses_what_it_cannot_read(tmp_path, name, content, kwargs, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_table(path, **kwargs)


def test_load_table_refuses_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="data file not found"):
        load_table(tmp_path / "nothing.csv")


def test_plot_command_writes_the_png_and_says_where(tmp_path):
    x, y, _ = least_squares()
    fit(
        linear_model(),
        (x, y),
        F.mse_loss,
        TrainConfig(steps=10, log_every=2, run_dir=str(tmp_path), progress="none"),
    )
    console, buffer = _console()
    out = plot_command(tmp_path, tmp_path / "plots" / "run.png", console=console)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "plot written to" in buffer.getvalue()
