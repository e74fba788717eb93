"""What fit() costs over a hand-written torch loop, on the same MLP mini-batch training.

Both train the same MLP (AdamW, cross-entropy, mini-batches drawn by indexing a shuffled
permutation) for the same number of steps from the same weights, in one process, repeats
interleaved (hand, fit, hand, fit, ...) so that drifts in machine speed hit both alike.
The ratio is median(fit) / median(hand) (and the same for the fastest repeat, which is less
sensitive to other processes on the machine); the goal is <= 1.05.

    PYTHONPATH=src python benchmarks/loop_overhead.py [--steps 500] [--repeats 9] [--threads 1]

One thread by default: on a shared machine, a second thread competes with other processes
and its jitter swamps the few percent being measured.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from descent.train import TrainConfig, fit


def make_problem(examples: int, features: int, classes: int):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(examples, features, generator=generator)
    y = (x @ torch.randn(features, classes, generator=generator)).argmax(dim=1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, classes)
    )
    return x, y, model


def hand_written(model, x, y, steps: int, batch_size: int, lr: float) -> float:
    """The loop a user would write: shuffle each epoch, index, forward, backward, step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    per_epoch = len(x) // batch_size
    order = torch.randperm(len(x), generator=generator)
    for step in range(steps):
        index = step % per_epoch
        if index == 0 and step > 0:
            order = torch.randperm(len(x), generator=generator)
        rows = order[index * batch_size : (index + 1) * batch_size]
        loss = F.cross_entropy(model(x[rows]), y[rows])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def with_fit(model, x, y, steps: int, batch_size: int, lr: float, **overrides) -> float:
    config = TrainConfig(
        optimizer="adamw",
        lr=lr,
        batch_size=batch_size,
        steps=steps,
        decay_biases_and_norms=True,  # one param group, like the hand-written loop
        progress="none",
        **overrides,
    )
    start = time.perf_counter()
    fit(model, (x, y), F.cross_entropy, config)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    x, y, model = make_problem(8192, 64, 10)
    initial = copy.deepcopy(model.state_dict())
    variants = {
        "hand-written torch loop": lambda: hand_written(model, x, y, *common),
        "fit (defaults: guard on, log every 10)": lambda: with_fit(model, x, y, *common),
        "fit (guard off)": lambda: with_fit(model, x, y, *common, guard=False),
    }
    common = (arguments.steps, arguments.batch_size, 1e-3)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():  # warm-up, not timed
        model.load_state_dict(initial)
        run()
    for _ in range(arguments.repeats):
        for name, run in variants.items():
            model.load_state_dict(initial)
            times[name].append(run())
    baseline = statistics.median(times["hand-written torch loop"])
    best_baseline = min(times["hand-written torch loop"])
    print(
        f"MLP 64-256-256-10, AdamW, batch {arguments.batch_size}, {arguments.steps} steps, "
        f"{arguments.repeats} interleaved repeats; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}"
    )
    print(f"{'variant':<42}{'median s':>10}{'us/step':>10}{'ratio':>8}{'min s':>10}{'ratio':>8}")
    for name, values in times.items():
        median, best = statistics.median(values), min(values)
        print(
            f"{name:<42}{median:>10.4f}{median / arguments.steps * 1e6:>10.1f}"
            f"{median / baseline:>8.3f}{best:>10.4f}{best / best_baseline:>8.3f}"
        )


if __name__ == "__main__":
    main()
