"""Which route to a fused Lion step reaches the bandwidth floor on CPU: the design probe.

Three ways to run the same Lion update, timed round-robin with the in-place triad floor:

- ``inductor per tensor``: one torch.compile'd kernel (dynamic shapes) called per tensor;
- ``inductor flat``: one compiled kernel over flat p, g, m buffers (the ideal layout, which a
  user's model does not have: autograd makes one gradient tensor per parameter);
- ``C kernel``: descent's fused kernel over arrays of the tensors' pointers (``_fused``),
  called once for all tensors, Python overhead included.

    python benchmarks/fused_routes.py --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))

from step_time import LAYOUTS

from descent.optim import _fused


def lion_update(p, g, m, lr, decay, beta1: float, beta2: float):
    p.mul_(decay)
    c = m * beta1 + g * (1 - beta1)
    p.add_(torch.sign(c) * -lr)
    m.mul_(beta2).add_(g * (1 - beta2))


def probe(title: str, shapes: list[tuple[int, ...]], rounds: int, compiled: tuple) -> None:
    per_tensor, flat_kernel = compiled
    lr, decay = torch.tensor(1e-4), torch.tensor(1 - 1e-5)
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=generator) for s in shapes]
    grads = [torch.randn(s, generator=generator) for s in shapes]
    moments = [torch.zeros(s) for s in shapes]
    numel = sum(p.numel() for p in params)
    flat = [torch.randn(numel), torch.randn(numel), torch.zeros(numel)]
    a, c = torch.randn(numel), torch.randn(numel)
    routes = {
        "triad": lambda: a.add_(c, alpha=1e-3),
        "inductor per tensor": lambda: [
            per_tensor(p.view(-1), g.view(-1), m.view(-1), lr, decay, 0.9, 0.99)
            for p, g, m in zip(params, grads, moments)
        ],
        "inductor flat": lambda: flat_kernel(*flat, lr, decay, 0.9, 0.99),
        "C kernel": lambda: _fused.lion(
            params, grads, moments, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.1
        ),
    }
    print(f"\n{title}: {len(params)} tensors, {numel / 1e6:.1f}M parameters")
    for name, route in routes.items():
        started = time.perf_counter()
        route()
        print(f"  {name}: first call {time.perf_counter() - started:.2f} s")
    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(rounds):
        for name, route in routes.items():
            started = time.perf_counter()
            route()
            times[name].append(time.perf_counter() - started)
    for name, values in times.items():
        ratios = [t / (triad * 20 / 12) for t, triad in zip(values, times["triad"])]
        print(
            f"  {name:20s} {statistics.median(values) * 1e3:8.2f} ms"
            f"  x floor {statistics.median(ratios):5.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    compiled = (
        torch.compile(lion_update, dynamic=True, fullgraph=True),
        torch.compile(lion_update, fullgraph=True),
    )
    for title, shapes in LAYOUTS.values():
        probe(title, shapes(), args.rounds, compiled)


if __name__ == "__main__":
    main()
