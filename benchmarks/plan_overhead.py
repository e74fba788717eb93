"""Where a fused Lion step's time goes on many small tensors: kernel against the rest.

Times, round-robin in a shuffled order with ``gc.collect()`` before each call (as
``step_time.py`` does, so the tensors' metadata is as cold as there), the in-place triad floor;
the C kernel alone from the cached plan's pointer array (2 threads and 1 thread); the
planned step with the kernel call replaced by a no-op (the per-step overhead: the C++
gather's walk over the parameters and gradients, its checks, the Python around it); the same
with the Python checks instead of the C++ gather (what runs where it cannot be built); the
C++ gather alone; ``optimizer.step()`` with the no-op kernel (adds torch's step wrapper); the
full step; and two single passes over the list in Python (``p.grad`` of every parameter,
``p.data_ptr()`` of every parameter).

    PYTHONPATH=src python benchmarks/plan_overhead.py --rounds 40
"""

from __future__ import annotations

import argparse
import array
import gc
import operator
import random
import statistics
import time

import torch
from step_time import LAYOUTS, make_params

from descent.optim import Lion, _fused, _gather


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="small", choices=sorted(LAYOUTS))
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    params = make_params(LAYOUTS[args.layout][1]())
    numel = sum(p.numel() for p in params)
    a, c = torch.randn(numel), torch.randn(numel)
    optimizer = Lion(params, lr=1e-4, weight_decay=0.1, fused=True)
    optimizer.step()
    optimizer.step()
    plan = _fused._plans[optimizer][(0, "lion")]
    kernel = plan.function
    hp = _fused.lion_scalars(1e-4, 0.9, 0.99, 0.1)
    hyper = array.array("d", hp)

    def kernel_only(threads: int):
        def call() -> None:
            kernel(
                plan.pointers.buffer_info()[0],
                plan.count,
                plan.sizes.buffer_info()[0],
                hyper.buffer_info()[0],
                threads,
            )

        return call

    def without_kernel(step, gather: bool = True):
        def call() -> None:
            plan.function = lambda *_: None
            handle = plan.handle
            if not gather:
                plan.handle = None  # the Python checks, as where the C++ op is unavailable
            try:
                assert step() is not False
            finally:
                plan.function, plan.handle = kernel, handle

        return call

    if plan.handle is None:
        raise SystemExit(f"the C++ gather is unavailable: {_gather.unavailable_reason()}")
    grad, data_ptr = operator.attrgetter("grad"), torch.Tensor.data_ptr
    calls = {
        "triad a += s*c": lambda: a.add_(c, alpha=1e-3),
        "kernel alone, 2 threads": kernel_only(2),
        "kernel alone, 1 thread": kernel_only(1),
        "planned_step, kernel a no-op": without_kernel(
            lambda: _fused.planned_step(optimizer, 0, "lion", hp)
        ),
        "planned_step, Python checks, kernel a no-op": without_kernel(
            lambda: _fused.planned_step(optimizer, 0, "lion", hp), gather=False
        ),
        "optimizer.step(), kernel a no-op": without_kernel(optimizer.step),
        "optimizer.step()": optimizer.step,
        "pass: p.grad of every parameter": lambda: list(map(grad, params)),
        "the C++ gather alone": lambda: _gather.gather(
            plan.handle, plan.pointers.buffer_info()[0] + 8 * plan.grad_slot
        ),
        "pass: p.data_ptr() of every parameter": lambda: list(map(data_ptr, params)),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    schedule = list(calls.items())
    order = random.Random(0)
    for _ in range(args.rounds):
        order.shuffle(schedule)
        for name, call in schedule:
            gc.collect()
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    floor = statistics.median(times["triad a += s*c"]) * 20 / 12
    print(f"{args.layout}: {len(params)} tensors, {numel / 1e6:.1f}M parameters")
    print(f"Lion floor (20 B/param at the triad's bandwidth): {floor * 1e3:.3f} ms")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"  {name:44s} {seconds * 1e3:7.3f} ms  {seconds / floor:5.2f} x Lion floor")


if __name__ == "__main__":
    main()
