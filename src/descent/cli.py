"""The ``descent`` command line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from descent.optim import OPTIMIZERS
from descent.train.minimize import minimize
from descent.workloads.landscapes import LANDSCAPES, get_landscape

app = typer.Typer(
    help="Training models by gradient descent: optimizers, landscapes, comparisons.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def parse_value(text: str) -> object:
    """Read a ``--param`` value: bool, int, float, a comma-separated tuple, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if "," in text:
        return tuple(parse_value(part) for part in text.split(","))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_params(pairs: list[str]) -> dict[str, object]:
    """Turn ``["momentum=0.9", "betas=0.9,0.99"]`` into keyword arguments."""
    parsed = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            _fail(f"--param takes NAME=VALUE, got {pair!r}")
        parsed[name.strip()] = parse_value(value)
    return parsed


@app.command("minimize")
def minimize_command(
    landscape: Annotated[str, typer.Argument(help=f"One of: {', '.join(LANDSCAPES)}.")],
    optimizer: Annotated[
        list[str] | None,
        typer.Option(
            "--optimizer", "-o", help="A registered optimizer; repeat to compare several."
        ),
    ] = None,
    lr: Annotated[
        list[float] | None,
        typer.Option(help="Learning rate: one for all, or one per --optimizer, in order."),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", "-n", help="Optimizer steps.")] = 1000,
    start: Annotated[
        str | None, typer.Option(help="Start point 'x,y' (default: the landscape's).")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Other hyperparameters, NAME=VALUE, repeatable."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Save the trajectories over the contours (PNG).")
    ] = None,
) -> None:
    """Run optimizers on a 2-D landscape and report where each ends."""
    names = optimizer or ["adam"]
    lrs = lr or []
    runs = {}
    try:
        surface = get_landscape(landscape)
        if len(lrs) not in (0, 1, len(names)):
            raise ValueError(
                f"give one --lr for all optimizers or one per --optimizer ({len(names)}), "
                f"got {len(lrs)}"
            )
        x0 = surface.start if start is None else tuple(float(v) for v in start.split(","))
        if len(x0) != 2:
            raise ValueError(f"--start needs two numbers 'x,y', got {start!r}")
        for index, name in enumerate(names):
            hyperparameters = parse_params(param or [])
            if lrs:
                hyperparameters["lr"] = lrs[index] if len(lrs) > 1 else lrs[0]
            label = name if names.count(name) == 1 else f"{name} lr={hyperparameters.get('lr')}"
            runs[label] = minimize(surface, x0, name, steps, **hyperparameters)
    except (ValueError, TypeError) as error:
        _fail(str(error))

    if len(runs) == 1:
        _report_one(surface, names[0], x0, runs[names[0]])
    else:
        _report_many(surface, x0, runs)
    if plot is not None:
        from descent.lab.report import plot_trajectories

        saved = plot_trajectories(surface, runs, plot)
        console.print(f"trajectory plot: {saved}")


def _report_one(surface, name: str, x0: tuple, trajectory) -> None:
    table = Table(title=f"{name} on {surface.name}, {len(trajectory.path) - 1} steps")
    table.add_column("")
    table.add_column("x", justify="right")
    table.add_column("y", justify="right")
    table.add_column("f", justify="right")
    table.add_row("start", *(f"{v:.6g}" for v in x0), f"{trajectory.losses[0]:.6g}")
    table.add_row("end", *(f"{v:.6g}" for v in trajectory.x), f"{trajectory.loss:.6g}")
    if surface.minima:
        nearest, distance = surface.nearest_minimum(trajectory.x)
        table.add_row("nearest minimum", *(f"{v:.6g}" for v in nearest), "")
    console.print(table)
    if surface.minima:
        console.print(f"distance to nearest minimum: {distance:.6g}")
    console.print(f"loss: {trajectory.loss:.6g}")
    if trajectory.diverged_at is not None:
        console.print(
            f"[bold yellow]diverged at step {trajectory.diverged_at}[/]: the value or the point "
            "stopped being finite; try a smaller --lr"
        )


def _report_many(surface, x0: tuple, runs: dict) -> None:
    start_value = surface(torch.tensor(x0, dtype=torch.float64))
    title = f"{surface.name} from ({x0[0]:.6g}, {x0[1]:.6g}), f = {start_value:.6g}"
    table = Table(title=title)
    for column in ("optimizer", "steps", "end x", "end y", "loss", "distance to minimum"):
        justify = "left" if column == "optimizer" else "right"
        table.add_column(column, justify=justify, overflow="fold")
    for label, trajectory in runs.items():
        distance = (
            f"{surface.nearest_minimum(trajectory.x)[1]:.4g}"
            if surface.minima and trajectory.diverged_at is None
            else "-"
        )
        steps = str(len(trajectory.path) - 1)
        if trajectory.diverged_at is not None:
            steps += " (diverged)"
        table.add_row(
            label, steps, *(f"{v:.4g}" for v in trajectory.x), f"{trajectory.loss:.4g}", distance
        )
    console.print(table)


@app.command("train")
def train(
    data: Annotated[Path, typer.Argument(help=".npz with arrays X and y, or a numeric .csv.")],
    config: Annotated[Path | None, typer.Option(help="A TrainConfig TOML file.")] = None,
    task: Annotated[str, typer.Option(help="regression or classification.")] = "regression",
    model: Annotated[str, typer.Option(help="linear or mlp.")] = "linear",
    hidden: Annotated[int, typer.Option(help="Hidden units of the mlp.")] = 64,
    val_fraction: Annotated[float, typer.Option(help="Rows held out for validation.")] = 0.2,
    standardize: Annotated[bool, typer.Option(help="Standardise the features.")] = True,
    target: Annotated[str | None, typer.Option(help="CSV target column (default: last).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config field, NAME=VALUE, repeatable."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in run_dir.")] = False,
) -> None:
    """Train a linear model or an MLP on your data with fit(); report validation metrics."""
    from descent.train import DivergenceError, TrainingInterrupted
    from descent.train.commands import train_command

    try:
        overrides = parse_params(set_ or [])
        train_command(
            data, config, task, model, hidden, val_fraction, standardize, target, overrides,
            resume, console=console,
        )  # fmt: skip
    except (ValueError, TypeError, DivergenceError) as error:
        _fail(str(error))
    except TrainingInterrupted as interruption:
        console.print(f"[bold yellow]{interruption}[/]")
        raise typer.Exit(code=130) from None


@app.command("lr-find")
def lr_find(
    data: Annotated[Path, typer.Argument(help=".npz with arrays X and y, or a numeric .csv.")],
    task: Annotated[str, typer.Option(help="regression or classification.")] = "regression",
    model: Annotated[str, typer.Option(help="linear or mlp.")] = "linear",
    hidden: Annotated[int, typer.Option(help="Hidden units of the mlp.")] = 64,
    optimizer: Annotated[str, typer.Option("--optimizer", "-o")] = "sgd",
    batch_size: Annotated[int | None, typer.Option(help="Mini-batch size.")] = 32,
    start_lr: Annotated[float, typer.Option(help="First lr of the sweep.")] = 1e-6,
    end_lr: Annotated[float, typer.Option(help="Last lr of the sweep.")] = 10.0,
    steps: Annotated[int, typer.Option(help="Steps of the sweep.")] = 100,
    out: Annotated[Path, typer.Option(help="Where to save the curve (PNG).")] = Path("lr_find.png"),
    seed: Annotated[int, typer.Option()] = 0,
    target: Annotated[str | None, typer.Option(help="CSV target column (default: last).")] = None,
    config: Annotated[Path | None, typer.Option(help="A TrainConfig TOML file.")] = None,
) -> None:
    """Learning-rate range test (Smith 2017): sweep the lr up, print the curve, suggest one."""
    from descent.train.commands import lr_find_command

    try:
        lr_find_command(
            data, task, model, hidden, optimizer, batch_size, start_lr, end_lr, steps, out,
            seed, target, config, console=console,
        )  # fmt: skip
    except (ValueError, TypeError) as error:
        _fail(str(error))


@app.command("plot")
def plot_run(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with metrics.jsonl.")],
    out: Annotated[Path | None, typer.Option(help="Default: RUN_DIR/curves.png.")] = None,
) -> None:
    """Draw a run's loss, lr and metric curves to a PNG."""
    from descent.train.commands import plot_command

    try:
        plot_command(run_dir, out, console=console)
    except (ValueError, TypeError) as error:
        _fail(str(error))


@app.command("optimizers")
def optimizers_command() -> None:
    """List the registered optimizers and their defaults."""
    table = Table(title="descent optimizers")
    table.add_column("name")
    table.add_column("what")
    table.add_column("defaults")
    for name, spec in OPTIMIZERS.items():
        shown = {
            k: v
            for k, v in spec.hyperparameters.items()
            if k not in ("foreach", "maximize", "differentiable", "capturable", "fused")
            and not (isinstance(v, float) and math.isnan(v))
        }
        table.add_row(name, spec.summary, ", ".join(f"{k}={v}" for k, v in shown.items()))
    console.print(table)


if __name__ == "__main__":
    app()
