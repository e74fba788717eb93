"""Optimizer step time against the memory-bandwidth floor, every optimizer timed side by side.

The floor of a method is its minimal traffic (bytes per parameter per step: Lion and SGD
momentum 20, Sophia 24, AdamW 28, Sophia's curvature update 12) divided by the bandwidth of an
in-place triad ``a += s*c`` over the same number of float32 elements. The triad runs in every
round together with the optimizers (round-robin, in a shuffled order each round), so the
machine's drift hits both; the metric is the median step time over the floor computed from
the median triad of those rounds.

Columns: median seconds per step, x floor, GB/s (the method's minimal bytes per step / median
seconds), compile seconds (cold; descent's fused rows: the C kernel, built at the first
step, plus the C++ gather, built with the first plan at the second), seconds to the first
step (construction, compile and one step; includes allocating the state), optimizer state
bytes per parameter byte, fresh MiB per step (CPU: minor page faults x page size during the
timed steps, memory the step had to get from the kernel, i.e. full-size temporaries; CUDA:
peak allocated bytes during the step above those allocated before it).

``--device cuda`` runs the same contenders and rounds on the GPU, timed with CUDA events (the
step's launches between two events, then a synchronize), with the triad on the GPU as the
floor; it also measures the card's copy bandwidth (``b.copy_(a)`` of a 1 GiB buffer, 2 x bytes
/ time) and adds each row's GB/s as a fraction of it. Rows that exist only on CPU are skipped;
descent's ``fused=True`` runs through torch.compile there and counts as a compiled contender.

    python benchmarks/step_time.py                           # everything, both layouts
    python benchmarks/step_time.py --layouts small --only descent --rounds 3
    python benchmarks/step_time.py --write benchmarks/RESULTS.md
    python benchmarks/step_time.py --device cuda --write benchmarks/RESULTS.md

Needs the ``bench`` extra (lion-pytorch, sophia-opt, pytorch-optimizer); contenders whose
package is missing are listed as such. Compiled contenders compile in a child process first,
under ``--compile-cap`` seconds, and are reported as "did not compile in N s" past it.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# Cold compile caches for every contender, so compile seconds mean what a new user waits.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))
os.environ.setdefault("DESCENT_CACHE_DIR", tempfile.mkdtemp(prefix="descent-"))

HEADINGS = {
    "cpu": "## Optimizer step time (issue 4)",
    "cuda": "## Optimizer step time on CUDA (issue 4)",
}
PAGE = resource.getpagesize()


def gpt2_small() -> list[tuple[int, ...]]:
    """GPT-2 small's 148 tensors (124.4M parameters, lm_head tied to wte)."""
    d, shapes = 768, [(50257, 768), (1024, 768)]
    block = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]
    block += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + block * 12 + [(d,), (d,)]


def many_small() -> list[tuple[int, ...]]:
    """2,000 small tensors, 21.5M parameters: 1,000 (128, 160) matrices and 1,000 vectors."""
    return [(128, 160) if i % 2 == 0 else (1024,) for i in range(2000)]


LAYOUTS = {"gpt2": ("GPT-2-small layout", gpt2_small), "small": ("2,000 small tensors", many_small)}


@dataclass
class Contender:
    name: str
    floor_bytes: int  # minimal bytes per parameter per step
    build: Callable[[list[torch.Tensor]], tuple[Callable[[], None], object]]
    compiled: tuple[str, ...] = ()  # device types on which the first step compiles
    devices: tuple[str, ...] = ("cpu", "cuda")


def _descent_lion(path: dict) -> Callable:
    def build(params):
        from descent.optim import Lion

        optimizer = Lion(params, lr=1e-4, weight_decay=0.1, **path)
        return optimizer.step, optimizer

    return build


def _descent_sophia(path: dict, curvature: bool = False) -> Callable:
    def build(params):
        from descent.optim import Sophia

        optimizer = Sophia(params, lr=1e-4, bs=480, **path)
        optimizer.step()  # state exists, so the curvature update times only its own work
        if curvature:
            return optimizer.update_hessian, optimizer
        return optimizer.step, optimizer

    return build


def _torch(cls_name: str, **kwargs) -> Callable:
    def build(params):
        optimizer = getattr(torch.optim, cls_name)(params, lr=1e-4, **kwargs)
        return optimizer.step, optimizer

    return build


def _po_lion(compiled: bool) -> Callable:
    def build(params):
        from pytorch_optimizer import Lion

        optimizer = Lion(params, lr=1e-4, weight_decay=0.1, foreach=True)
        if compiled:
            if not hasattr(optimizer, "_compile_foreach"):
                raise ImportError("this pytorch_optimizer has no _compile_foreach")
            optimizer._compile_foreach()
        return optimizer.step, optimizer

    return build


def _po_sophiah(params):
    from pytorch_optimizer import SophiaH

    # Hutchinson's estimate needs a graph; the benchmark times the step alone, so the
    # estimate is given once and never recomputed (update_period beyond the run).
    optimizer = SophiaH(params, lr=1e-4, update_period=10**9, foreach=True)
    optimizer.step(hessian=[torch.rand_like(p) for p in params])
    return optimizer.step, optimizer


def _lion_pytorch(params):
    from lion_pytorch import Lion

    optimizer = Lion(params, lr=1e-4, weight_decay=0.1)
    return optimizer.step, optimizer


def _sophia_g(params):
    from sophia_opt import SophiaG

    optimizer = SophiaG(params, lr=1e-4, rho=0.04, weight_decay=0.1)
    optimizer.update_hessian()
    return (lambda: optimizer.step(bs=480)), optimizer


SINGLE, FOREACH, FUSED = (
    {"foreach": False, "fused": False},
    {"foreach": True, "fused": False},
    {"fused": True},
)
CONTENDERS = [
    Contender("descent Lion fused", 20, _descent_lion(FUSED), compiled=("cuda",)),
    Contender("descent Lion foreach", 20, _descent_lion(FOREACH)),
    Contender("descent Lion single-tensor", 20, _descent_lion(SINGLE)),
    Contender("descent Sophia fused", 24, _descent_sophia(FUSED), compiled=("cuda",)),
    Contender("descent Sophia foreach", 24, _descent_sophia(FOREACH)),
    Contender("descent Sophia single-tensor", 24, _descent_sophia(SINGLE)),
    Contender(
        "descent Sophia update_hessian fused", 12, _descent_sophia(FUSED, True), compiled=("cuda",)
    ),
    Contender("descent Sophia update_hessian foreach", 12, _descent_sophia(FOREACH, True)),
    Contender("torch AdamW fused", 28, _torch("AdamW", fused=True)),
    Contender("torch AdamW foreach", 28, _torch("AdamW", foreach=True)),
    Contender("torch SGD momentum fused", 20, _torch("SGD", momentum=0.9, fused=True)),
    Contender("pytorch_optimizer Lion foreach", 20, _po_lion(False)),
    Contender(
        "pytorch_optimizer Lion _compile_foreach()", 20, _po_lion(True), compiled=("cpu", "cuda")
    ),
    Contender("pytorch_optimizer SophiaH step", 24, _po_sophiah),
    Contender("lion-pytorch Lion", 20, _lion_pytorch),
    Contender("sophia-opt SophiaG step", 24, _sophia_g),
]


def make_params(shapes: list[tuple[int, ...]], device: str = "cpu") -> list[torch.Tensor]:
    """The same values on every device (drawn on CPU, then moved)."""
    generator = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter((torch.randn(shape, generator=generator) * 0.02).to(device))
        p.grad = (torch.randn(shape, generator=generator) * 1e-3).to(device)
        params.append(p)
    return params


def measure(step: Callable[[], None], device: str) -> tuple[float, int]:
    """Seconds and fresh bytes of one call of ``step`` (see the module docstring)."""
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, torch.cuda.max_memory_allocated() - before
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    step()
    elapsed = time.perf_counter() - started
    return elapsed, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) * PAGE


def copy_bandwidth(device: str, repeats: int = 21) -> float:
    """Bytes per second of ``b.copy_(a)`` over 1 GiB (read a, write b), median of repeats."""
    a = torch.ones(2**28, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    seconds = statistics.median(measure(lambda: b.copy_(a), device)[0] for _ in range(repeats))
    return 2 * a.nbytes / seconds


def state_bytes(optimizer) -> int:
    return sum(
        value.nbytes
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def _first_step_in_child(contender_index: int, layout: str, device: str, queue) -> None:
    torch.set_num_threads(torch.get_num_threads())
    params = make_params(LAYOUTS[layout][1](), device)
    started = time.perf_counter()
    step, _ = CONTENDERS[contender_index].build(params)
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    queue.put(time.perf_counter() - started)


def cold_compile_seconds(index: int, layout: str, device: str, cap: float) -> float | None:
    """First step of a compiled contender in a child process; None past ``cap`` seconds."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    args = (index, layout, device, queue)
    child = context.Process(target=_first_step_in_child, args=args)
    child.start()
    child.join(cap)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return queue.get() if not queue.empty() else float("nan")


def run_layout(
    layout: str, contenders: list[Contender], rounds: int, cap: float, device: str = "cpu"
) -> list[dict]:
    title, shapes = LAYOUTS[layout]
    params = make_params(shapes(), device)
    numel = sum(p.numel() for p in params)
    param_bytes = sum(p.nbytes for p in params)
    print(f"\n{title}: {len(params)} tensors, {numel / 1e6:.1f}M parameters", flush=True)
    a = torch.randn(numel, device=device)
    c = torch.randn(numel, device=device)

    def triad() -> None:
        a.add_(c, alpha=1e-3)

    rows: dict[str, dict] = {}
    live: list[tuple[Contender, Callable[[], None]]] = []
    descent_built = 0.0
    for contender in contenders:
        if device not in contender.devices:
            continue
        compiled = device in contender.compiled
        row = rows.setdefault(contender.name, {"name": contender.name, "times": [], "faults": []})
        row["floor_bytes"] = contender.floor_bytes
        cold = None
        if compiled:
            cold = cold_compile_seconds(CONTENDERS.index(contender), layout, device, cap)
            if cold is None:
                row["note"] = f"did not compile in {cap:.0f} s"
                print(f"  {contender.name}: did not compile in {cap:.0f} s", flush=True)
                continue
        try:
            started = time.perf_counter()
            step, optimizer = contender.build(params)
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            first = time.perf_counter() - started
        except ImportError as error:
            row["note"] = f"not installed ({error})"
            continue
        row["compile"] = cold if cold is not None else (first if compiled else None)
        # Time to the first step: build/compile (cold, from the child for compiled ones) + step.
        row["first"] = max(first, cold) if compiled else first
        row["state"] = state_bytes(optimizer) / param_bytes
        step()  # warm-up: state and allocator caches in place (descent fused: builds the plan)
        if device == "cpu" and contender.name.startswith("descent") and "fused" in contender.name:
            from descent.optim import _gather, _kernels

            # Both libraries, built once per process (the C kernel at the first step, the
            # C++ gather with the first plan, at the second; cold: DESCENT_CACHE_DIR starts
            # empty). The first descent row of a layout shows it; the others find them built.
            built = (_kernels.compile_seconds or 0) + (_gather.compile_seconds or 0)
            row["compile"] = built - descent_built
            descent_built = built
        live.append((contender, step))
        print(f"  ready {contender.name} (first step {first:.2f} s)", flush=True)
    triad()
    rows["triad"] = {"name": "triad a += s*c (floor)", "times": [], "faults": [], "floor_bytes": 0}
    copy = copy_bandwidth(device) if device == "cuda" else None
    # A fresh order every round: a step right after one that freed gigabytes of temporaries
    # runs while the kernel reclaims them, and a fixed order would put the same step (the
    # triad, first) there every round.
    order = random.Random(0)
    for round_index in range(rounds):
        schedule = [(None, triad), *live]
        order.shuffle(schedule)
        for contender, step in schedule:
            name = "triad" if contender is None else contender.name
            gc.collect()
            elapsed, fresh = measure(step, device)
            rows[name]["times"].append(elapsed)
            rows[name]["faults"].append(fresh)
        print(f"  round {round_index + 1}/{rounds} done", flush=True)
    # The floor is the median of the triads timed in the same rounds; x floor = median step
    # time / floor. (A ratio per round and its median reads one triad per ratio, which is
    # noisier: on this machine the two differed by up to 0.3.)
    triad_seconds = statistics.median(rows["triad"]["times"])
    result = []
    for row in rows.values():
        if row["times"]:
            row["seconds"] = statistics.median(row["times"])
            if row["floor_bytes"]:
                row["ratio"] = row["seconds"] / (triad_seconds * row["floor_bytes"] / 12)
            row["gbps"] = (row["floor_bytes"] or 12) * numel / row["seconds"] / 1e9
            if copy is not None:
                row["of_copy"] = row["gbps"] * 1e9 / copy
            row["fresh_mib"] = statistics.median(row["faults"]) / 2**20
        result.append(row)
    bandwidth = 12 * numel / triad_seconds / 1e9
    print(f"  triad bandwidth {bandwidth:.1f} GB/s", flush=True)
    if copy is not None:
        result.append({"name": "copy", "copy_gbps": copy / 1e9})
        print(f"  copy bandwidth {copy / 1e9:.1f} GB/s", flush=True)
    del live, params
    gc.collect()
    return result


def table(layout: str, rows: list[dict]) -> str:
    title, shapes = LAYOUTS[layout]
    count, numel = len(shapes()), sum(torch.Size(s).numel() for s in shapes())
    copy = next((row["copy_gbps"] for row in rows if "copy_gbps" in row), None)
    of_copy = " × copy BW |" if copy is not None else ""
    lines = [
        f"**{title}** ({count} tensors, {numel / 1e6:.1f}M float32 parameters)",
        "",
        f"| implementation | seconds | × floor | GB/s |{of_copy} compile s | first step s "
        "| state B / param B | fresh MiB / step |",
        "|---|---:|---:|---:|" + ("---:|" if copy is not None else "") + "---:|---:|---:|---:|",
    ]
    for row in rows:
        if "copy_gbps" in row:
            continue
        if "seconds" not in row:
            blank = " |" * (7 if copy is None else 8)
            lines.append(f"| {row['name']} | {row.get('note', 'n/a')}{blank}")
            continue
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else ""
        if row["floor_bytes"] == 0:
            ratio = "(floor)"
        compile_s = f"{row['compile']:.1f}" if row.get("compile") is not None else ""
        state = f"{row['state']:.2f}" if "state" in row else ""
        first = f"{row['first']:.1f}" if "first" in row else ""
        fraction = f" {row['of_copy']:.2f} |" if copy is not None else ""
        lines.append(
            f"| {row['name']} | {row['seconds']:.4f} | {ratio} | {row['gbps']:.1f} |{fraction} "
            f"{compile_s} | {first} | {state} | {row['fresh_mib']:.0f} |"
        )
    if copy is not None:
        lines += ["", f"Copy bandwidth (`b.copy_(a)`, 1 GiB, 2 × bytes / time): {copy:.1f} GB/s."]
    return "\n".join(lines)


def write_results(path: Path, body: str, heading: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(heading + "\n")
    if start >= 0:
        following = text.find("\n## ", start + len(heading))
        text = text[:start] + body + "\n" + (text[following:] if following >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", default="gpt2,small", help="comma list of: gpt2, small")
    parser.add_argument(
        "--only", default="", help="comma list of name substrings (case-insensitive)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per layout")
    parser.add_argument("--compile-cap", type=float, default=120.0, help="seconds per compile")
    parser.add_argument("--write", type=Path, help="update this markdown file's section")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device cuda: CUDA is not available here (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}); run on a machine with a GPU or use "
            "--device cpu"
        )
    wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    contenders = [c for c in CONTENDERS if not wanted or any(w in c.name.lower() for w in wanted)]
    command = "python " + " ".join(["benchmarks/step_time.py", *(argv or sys.argv[1:])])
    if os.environ.get("PYTHONPATH"):
        command = f"PYTHONPATH={os.environ['PYTHONPATH']} {command}"
    sections = []
    for layout in args.layouts.split(","):
        rows = run_layout(layout.strip(), contenders, args.rounds, args.compile_cap, args.device)
        sections.append(table(layout.strip(), rows))
        print("\n" + sections[-1], flush=True)
    machine = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, {args.rounds} rounds, median over rounds"
    )
    if args.device == "cuda":
        machine = f"{torch.cuda.get_device_name()}, {machine}"
    heading = HEADINGS[args.device]
    body = "\n\n".join([heading, f"Command: `{command}`", f"Machine: {machine}.", *sections])
    if args.write:
        write_results(args.write, body, heading)
        print(f"\nwrote {args.write}")


if __name__ == "__main__":
    main()
