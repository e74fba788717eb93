"""The fused Lion and Sophia paths: same numbers as the single-tensor path, bit for bit.

Small tensors only (the kernels build once per process, in well under a second); one tensor
is large enough (70,001 elements) that the kernel splits it across threads.
"""

from __future__ import annotations

import array
import gc
import io
import resource
import shutil
import sys
import warnings
import weakref
from pathlib import Path

import pytest
import torch

from descent.optim import Lion, Sophia, _compiled, _fused, _gather, _kernels

pytestmark = pytest.mark.skipif(
    not _fused.available(), reason=f"fused kernels unavailable: {_fused.unavailable_reason()}"
)

SHAPES = [(3, 5), (1,), (17, 33), (70001,), (64,)]
DTYPES = [torch.float32, torch.float64]
PATHS = {
    "single": {"foreach": False, "fused": False},
    "foreach": {"foreach": True, "fused": False},
    "fused": {"fused": True},
    "default": {},
}


def _params(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=dtype)) for s in SHAPES]


def _build(cls, params, path: dict, **extra):
    """Two param groups with different hyperparameters; the last parameter never has a grad."""
    if cls is Lion:
        groups = [
            {"params": params[:2], "lr": 3e-2, "weight_decay": 0.5, "betas": (0.95, 0.98)},
            {"params": params[2:]},
        ]
        return cls(groups, lr=1e-2, weight_decay=0.1, **path, **extra)
    groups = [
        {"params": params[:2], "lr": 3e-2, "rho": 0.02, "weight_decay": 0.3},
        {"params": params[2:], "betas": (0.9, 0.95)},
    ]
    return cls(groups, lr=1e-2, bs=8, k=3, **path, **extra)


def _run(cls, optimizer, params, steps: int, seed: int = 1, start: int = 0) -> None:
    """Steps with fresh gradients, an lr schedule that changes every step, and (Sophia)
    GNB and Hutchinson curvature updates, the latter with negative entries."""
    generator = torch.Generator().manual_seed(seed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 / (1 + 0.1 * t))
    with warnings.catch_warnings():  # catching up a resumed schedule before any step
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(start):
            scheduler.step()
    for _ in range(steps):
        for p in params[:-1]:
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        params[-1].grad = None
        optimizer.step()
        scheduler.step()
        if cls is Sophia and optimizer.curvature_due:
            for p in params[:-1]:
                p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            optimizer.update_hessian()
            estimates = {
                p: torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params[:-1]
            }
            optimizer.update_hessian(estimates)


def _snapshot(optimizer, params) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in params]
    for p in params:
        tensors += [v.clone() for v in optimizer.state[p].values()]
    return tensors


def _assert_identical(expected: list[torch.Tensor], actual: list[torch.Tensor]) -> None:
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        assert a.dtype == b.dtype
        assert torch.equal(a, b), (a - b).abs().max()


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    original = _fused._call

    def counting(name, *args, **kwargs):
        calls.append(name)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(_fused, "_call", counting)
    return calls


@pytest.fixture
def planned(monkeypatch):
    """Records each cached-plan attempt's outcome (True: the step ran from the plan)."""
    outcomes = []
    original = _fused.planned_step

    def recording(*args, **kwargs):
        outcomes.append(original(*args, **kwargs))
        return outcomes[-1]

    monkeypatch.setattr(_fused, "planned_step", recording)
    return outcomes


@pytest.fixture(params=["c++", "python"])
def gather(request, monkeypatch):
    """Each plan test twice: the gradients gathered by the C++ op and by the Python checks."""
    if request.param == "python":
        monkeypatch.setattr(_gather, "available", lambda build=True: False)
    elif not _gather.available():
        pytest.skip(f"C++ gather unavailable: {_gather.unavailable_reason()}")
    return request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls", [Lion, Sophia], ids=lambda c: c.__name__)
@pytest.mark.parametrize("path", ["fused", "default"])
def test_fused_equals_single_tensor_bitwise(cls, dtype, path, kernel_calls, planned, gather):
    reference_params = _params(dtype)
    reference = _build(cls, reference_params, PATHS["single"])
    _run(cls, reference, reference_params, steps=10)
    assert not kernel_calls

    params = _params(dtype)
    optimizer = _build(cls, params, PATHS[path])
    _run(cls, optimizer, params, steps=10)

    expected_kernels = {"lion"} if cls is Lion else {"sophia", "hessian"}
    assert set(kernel_calls) == expected_kernels  # the fused kernels did the work
    assert True in planned and False in planned  # from the plans after the first step
    _assert_identical(_snapshot(reference, reference_params), _snapshot(optimizer, params))
    assert len(optimizer.state[params[-1]]) == 0  # no grad: skipped, no state
    assert torch.equal(params[-1], _params(dtype)[-1])


@pytest.mark.parametrize("cls", [Lion, Sophia], ids=lambda c: c.__name__)
@pytest.mark.parametrize(("first", "second"), [("fused", "foreach"), ("foreach", "fused")])
def test_state_dict_moves_between_paths(cls, first, second):
    """Save on one path after 5 steps, load into the other, continue 3 steps: identical to a
    single-tensor run that is interrupted and resumed the same way."""
    params = _params(torch.float32)
    optimizer = _build(cls, params, PATHS[first])
    _run(cls, optimizer, params, steps=5)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)

    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = _build(cls, resumed_params, PATHS[second])
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert all(group["fused"] == PATHS[second]["fused"] for group in resumed.param_groups)
    _run(cls, resumed, resumed_params, steps=3, start=5)
    if cls is Sophia:
        assert resumed.steps_taken == 8
    twin_params = _params(torch.float32)
    twin = _build(cls, twin_params, PATHS["single"])
    _run(cls, twin, twin_params, steps=5)
    _run(cls, twin, twin_params, steps=3, start=5)
    _assert_identical(_snapshot(twin, twin_params), _snapshot(resumed, resumed_params))


@pytest.mark.parametrize("cls", [Lion, Sophia], ids=lambda c: c.__name__)
def test_rows_the_kernel_cannot_take_fall_back(cls, kernel_calls):
    """A non-contiguous float32 parameter and a bfloat16 one go through the foreach path (the
    fallback), the rest is fused: everything equals an all-foreach run. (For bfloat16 the
    foreach and single-tensor paths differ in rounding: the fallback inherits foreach's.)"""

    def make():
        generator = torch.Generator().manual_seed(3)
        return [
            torch.nn.Parameter(torch.randn(6, 4, generator=generator).t()),
            torch.nn.Parameter(torch.randn(9, generator=generator).bfloat16()),
            torch.nn.Parameter(torch.randn(10, generator=generator)),
            torch.nn.Parameter(torch.randn(2, generator=generator, dtype=torch.float64)),
        ]

    results = []
    for path in ("foreach", "fused"):
        params = make()
        kwargs = {"bs": 4} if cls is Sophia else {}
        optimizer = cls(params, lr=1e-2, **kwargs, **PATHS[path])
        generator = torch.Generator().manual_seed(4)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)
            optimizer.step()
            if cls is Sophia:
                optimizer.update_hessian()
        results.append(_snapshot(optimizer, params))
    _assert_identical(*results)
    assert kernel_calls  # the contiguous float32/float64 rows were fused


def _single_and_fused(cls, planned, steps: int, between, count: int = 3, seed: int = 5):
    """Run ``steps`` steps on the single-tensor path and on the fused one, calling
    ``between(step, optimizer, params, generator)`` before each step (it sets the gradients
    and makes that step's change); assert both end bitwise equal; return the fused run's plan
    outcomes (Sophia: each step's, then its curvature update's)."""
    kwargs = {"bs": 4} if cls is Sophia else {}
    runs = []
    for path in ("single", "fused"):
        params = _params(torch.float32)[:count]
        optimizer = cls(params, lr=1e-2, weight_decay=0.1, **kwargs, **PATHS[path])
        generator = torch.Generator().manual_seed(seed)
        planned.clear()
        for step in range(steps):
            between(step, optimizer, params, generator)
            optimizer.step()
            if cls is Sophia:
                optimizer.update_hessian()
        runs.append(_snapshot(optimizer, params))
        if path == "single":
            assert not planned  # the single-tensor path never asks for a plan
    _assert_identical(*runs)
    return list(planned)


def _fresh_grads(params, generator) -> None:
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)


@pytest.mark.parametrize("cls", [Lion, Sophia], ids=lambda c: c.__name__)
def test_plan_follows_changes(cls, planned, gather):
    """The cached plan never runs stale: a parameter whose storage moved, a non-contiguous
    gradient, a missing gradient and a reloaded state each take the general path for that
    step, and every step still equals the single-tensor path. (Sophia: the same for the
    curvature update's plan, which runs after every step here.)"""

    def between(step, optimizer, params, generator):
        _fresh_grads(params, generator)
        if step == 3:
            params[0].data = params[0].data.clone()  # new storage under the same Parameter
        if step == 4:
            params[2].grad = params[2].grad.t().contiguous().t()  # same values, transposed
        if step == 5:
            params[1].grad = None
        if step == 6:
            optimizer.load_state_dict(optimizer.state_dict())

    outcomes = _single_and_fused(cls, planned, 9, between)
    assert outcomes.count(True) >= 4 and outcomes.count(False) >= 4
    if cls is Sophia:  # both plans ran: the step's and the curvature update's
        assert sum(outcomes) >= 8


@pytest.mark.parametrize("cls", [Lion, Sophia], ids=lambda c: c.__name__)
def test_frozen_parameters_stay_on_the_plan(cls, planned, gather):
    """Parameters without gradients (frozen, unused) do not keep a group off its plan; one
    that gets a gradient later rebuilds the plan (its state is created on the general path
    first). Every step equals the single-tensor path."""

    def between(step, optimizer, params, generator):
        for index, p in enumerate(params):  # params[3] is unfrozen at step 5, [4] stays frozen
            trainable = index < 3 or (index == 3 and step >= 5)
            p.grad = torch.randn(p.shape, generator=generator) if trainable else None

    outcomes = _single_and_fused(cls, planned, 8, between, count=len(SHAPES), seed=3)
    # Per step: the first has no state; the unfreezing step rebuilds (general path).
    if cls is Lion:
        assert outcomes == [False, True, True, True, True, False, True, True]
    else:  # (step, update_hessian) per step; the curvature plan runs from the first step on
        # and, at the unfreezing step, is rebuilt at once: the step's general path changed the
        # state (the new parameter's entries), which the plans see as a new state version.
        steps = [(False, True)] + [(True, True)] * 4 + [(False, True)] + [(True, True)] * 2
        assert outcomes == [outcome for pair in steps for outcome in pair]


@pytest.mark.parametrize(
    "change",
    ["replace a tensor", "replace the dict", "update", "delete", "pop", "clear", "load_state_dict"],
)
@pytest.mark.parametrize("cls", [Lion, Sophia], ids=lambda c: c.__name__)
def test_plans_see_state_changes(cls, change, planned, gather):
    """The plans keep pointers to the state tensors; whatever way the state is changed between
    steps, the next step uses the new state, as the single-tensor path does."""

    def between(step, optimizer, params, generator):
        _fresh_grads(params, generator)
        if step != 3:
            return
        state, p = optimizer.state, params[1]
        fresh = {key: torch.zeros_like(value) for key, value in state[p].items()}
        if change == "replace a tensor":
            state[p]["exp_avg"] = fresh["exp_avg"]
        elif change == "replace the dict":
            state[p] = fresh
        elif change == "update":
            state[p].update(exp_avg=fresh["exp_avg"])
        elif change == "delete":
            del state[p]
        elif change == "pop":
            state.pop(p)
        elif change == "clear":
            state.clear()
        else:
            saved = optimizer.state_dict()
            saved["state"][1]["exp_avg"] = fresh["exp_avg"]
            optimizer.load_state_dict(saved)

    outcomes = _single_and_fused(cls, planned, 6, between, seed=7)
    assert outcomes[-1] is True  # back on a plan after the change


@pytest.mark.parametrize("update", ["Lion.step", "Sophia.step", "Sophia.update_hessian"])
def test_plan_never_reads_past_a_shrunk_gradient(update, planned, gather):
    """``p.data = p.data[:k]`` keeps the data pointer and shrinks the parameter and its next
    gradient: the plan must not run (its sizes are the old ones); the general path raises on
    the stale state, as the single-tensor path does; with fresh state the plan runs again."""
    cls = Lion if update.startswith("Lion") else Sophia
    kwargs = {"bs": 4} if cls is Sophia else {}
    p, q = torch.nn.Parameter(torch.randn(17, 33)), torch.nn.Parameter(torch.randn(4))
    optimizer = cls([p, q], lr=1e-2, fused=True, **kwargs)
    run = optimizer.update_hessian if update.endswith("update_hessian") else optimizer.step
    for _ in range(2):
        p.grad, q.grad = torch.randn(p.shape), torch.randn(4)
        optimizer.step()
        run()
    assert planned[-1] is True
    pointer = p.data_ptr()
    p.data = p.data[:8]
    assert p.data_ptr() == pointer
    p.grad, q.grad = torch.randn(p.shape), torch.randn(4)
    with pytest.raises(RuntimeError, match="must match"):
        run()
    assert planned[-1] is False
    del optimizer.state[p]  # fresh state in the new shape: the plan is rebuilt and runs
    for _ in range(2):
        p.grad, q.grad = torch.randn(p.shape), torch.randn(4)
        run()
    assert planned[-1] is True


def test_build_happens_once_per_process(monkeypatch):
    """No rebuild for a new lr, new shapes or another dtype: hyperparameters are arguments."""
    assert _kernels.compile_seconds is not None and _kernels.compile_seconds < 30

    def no_rebuild(*_args, **_kwargs):
        raise AssertionError("kernels rebuilt")

    monkeypatch.setattr(_kernels, "_build", no_rebuild)
    for dtype, lr in ((torch.float32, 1e-3), (torch.float64, 2e-3), (torch.float32, 5e-4)):
        p = torch.nn.Parameter(torch.randn(int(lr * 1e4), dtype=dtype))
        p.grad = torch.ones_like(p)
        Lion([p], lr=lr, fused=True).step()


def test_gather_builds_where_a_compiler_and_headers_exist():
    """The C++ gather must not fall back silently on a machine that can build it (CI)."""
    headers = Path(torch.__file__).parent / "include" / "torch" / "library.h"
    if not (shutil.which("c++") or shutil.which("g++")) or not headers.exists():
        pytest.skip("no C++ compiler or no torch headers here")
    assert _gather.available(), _gather.unavailable_reason()
    assert _gather.compile_seconds is not None and _gather.compile_seconds < 30


def _gathered(handle: int, count: int) -> tuple[int, list[int]]:
    out = array.array("Q", [0] * count)
    return _gather.gather(handle, out.buffer_info()[0]), list(out)


@pytest.mark.skipif(not _gather.available(), reason="C++ gather unavailable")
def test_gather_answers():
    """Pointers of every gradient; GENERAL for a gradient the kernel cannot take; STALE for a
    moved or resized parameter, a resized gradient, a row whose gradient is gone, an idle
    parameter that got one, or an unknown handle."""
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(3, 4), (5,), (2, 2)]]
    idle = torch.nn.Parameter(torch.randn(7))  # frozen: no gradient when the plan was made
    handle = _gather.create(params, [idle], torch.float32)
    try:
        for p in params:
            p.grad = torch.randn(p.shape)
        assert _gathered(handle, 3) == (_gather.OK, [p.grad.data_ptr() for p in params])
        general, stale = _gather.GENERAL, _gather.STALE
        cases = {
            "transposed": (general, lambda: setattr(params[0], "grad", torch.randn(4, 3).t())),
            "sparse": (general, lambda: setattr(params[1], "grad", torch.randn(5).to_sparse())),
            "row lost its gradient": (stale, lambda: setattr(params[1], "grad", None)),
            "idle got a gradient": (stale, lambda: setattr(idle, "grad", torch.ones(7))),
        }
        for name, (answer, change) in cases.items():
            kept = params[0].grad, params[1].grad
            change()
            assert _gathered(handle, 3)[0] == answer, name
            params[0].grad, params[1].grad, idle.grad = *kept, None
            assert _gathered(handle, 3)[0] == _gather.OK, name
        params[0].grad = params[0].grad.t().contiguous().t()  # GENERAL does not hide a moved
        params[2].data = params[2].data.clone()  # parameter after it
        assert _gathered(handle, 3)[0] == _gather.STALE
    finally:
        _gather.release(handle)
    assert _gathered(handle, 3)[0] == _gather.STALE  # released: unknown

    p = torch.nn.Parameter(torch.randn(10))
    handle = _gather.create([p], [], torch.float32)
    p.grad = torch.randn(10)
    assert _gathered(handle, 1)[0] == _gather.OK
    p.data = p.data[:4]  # same pointer, fewer elements
    assert _gathered(handle, 1)[0] == _gather.STALE
    _gather.release(handle)


@pytest.mark.parametrize(
    ("case", "kept"),
    [("sparse", True), ("strided", True), ("lost", False), ("idle", False), ("moved", False)],
)
def test_plan_answers(case, kept, gather):
    """Both gathers, through the plan: a gradient the kernel cannot take leaves the plan for
    the next step (general path now); a changed set of gradients or a moved parameter drops
    it."""
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(4)]  # params[3] stays idle
    optimizer = Lion(params, lr=1e-2)
    hp = _fused.lion_scalars(1e-2, 0.9, 0.99, 0.0)
    for _ in range(2):
        for p in params[:3]:
            p.grad = torch.randn(5)
        optimizer.step()
    plan = _fused._plans[optimizer][(0, "lion")]
    assert _fused.planned_step(optimizer, 0, "lion", hp) is True
    change = {
        "sparse": lambda: setattr(params[1], "grad", torch.randn(5).to_sparse()),
        "strided": lambda: setattr(params[1], "grad", torch.randn(10)[::2]),
        "lost": lambda: setattr(params[1], "grad", None),
        "idle": lambda: setattr(params[3], "grad", torch.randn(5)),
        "moved": lambda: setattr(params[2], "data", params[2].data.clone()),
    }[case]
    change()
    assert _fused.planned_step(optimizer, 0, "lion", hp) is False
    assert (_fused._plans[optimizer].get((0, "lion")) is plan) is kept


def test_only_a_large_group_waits_for_the_gather_build(monkeypatch, tmp_path):
    """A plan of a few tensors (a 2-D toy problem) never triggers the C++ gather's one-time
    build; one of GATHER_BUILD_FROM tensors does. Both step correctly either way."""
    monkeypatch.setattr(_gather, "_ops", None)
    monkeypatch.setattr(_gather, "_failure", None)
    monkeypatch.setenv("DESCENT_CACHE_DIR", str(tmp_path))  # nothing is built there
    builds = []

    def not_built(source, suffix, commands, target):
        builds.append(target.name)
        raise RuntimeError("not built in this test")

    monkeypatch.setattr(_kernels, "_build", not_built)

    def plan(count: int):
        params = [torch.nn.Parameter(torch.randn(3)) for _ in range(count)]
        optimizer = Lion(params, lr=1e-2)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(3)
            optimizer.step()
        return _fused._plans[optimizer][(0, "lion")]

    small = plan(_fused.GATHER_BUILD_FROM - 1)
    assert small.dtype is torch.float32 and small.handle is None and builds == []
    assert plan(_fused.GATHER_BUILD_FROM).handle is None
    assert len(builds) == 1 and builds[0].startswith("gather-")
    assert "not built in this test" in _gather.unavailable_reason()


def test_plans_do_not_keep_parameters_alive(gather):
    """The C++ side holds a plan's parameters only as long as the optimizer lives."""
    params = [torch.nn.Parameter(torch.randn(8)) for _ in range(3)]
    optimizer = Lion(params, lr=1e-2, fused=True)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(8)
        optimizer.step()
    assert _fused._plans[optimizer][(0, "lion")].dtype is torch.float32
    alive = weakref.ref(params[0])
    del optimizer, params, p
    gc.collect()
    assert alive() is None


@pytest.mark.skipif(sys.platform != "linux", reason="counts page faults via getrusage")
@pytest.mark.parametrize("cls", [Lion, Sophia], ids=lambda c: c.__name__)
def test_no_full_size_temporaries(cls):
    """A fused step over a 16 MiB parameter touches no fresh memory: a single temporary of
    that size would show up as ~4,000 minor page faults (its pages are new each step)."""
    p = torch.nn.Parameter(torch.randn(4 * 2**20))
    p.grad = torch.randn_like(p)
    kwargs = {"bs": 4} if cls is Sophia else {}
    optimizer = cls([p], lr=1e-3, fused=True, **kwargs)
    optimizer.step()  # state allocated here
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        optimizer.step()
        if cls is Sophia:
            optimizer.update_hessian()
    assert not [e.key for e in profile.key_averages() if e.key.startswith("aten::")]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    optimizer.step()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 400


def test_path_arguments_are_validated(monkeypatch):
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="exclude each other"):
        Lion([p], foreach=True, fused=True)
    with pytest.raises(TypeError, match="Invalid fused"):
        Sophia([p], fused="yes")
    p.grad = torch.ones(3)
    monkeypatch.setattr(_kernels, "_library", None)
    monkeypatch.setattr(_kernels, "_failure", "no C compiler found (set CC)")
    with pytest.raises(RuntimeError, match="no C compiler"):
        Lion([p], fused=True).step()
    Lion([p]).step()  # fused=None quietly falls back


def test_explicit_foreach_keeps_its_path(kernel_calls):
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    Lion([p], foreach=False).step()
    Lion([p], foreach=True).step()
    assert not kernel_calls
    Lion([p]).step()
    assert kernel_calls == ["lion"]


def test_compiled_graphs_match_single_tensor():
    """The accelerator path's graphs (torch.compile; Triton on CUDA) run here through
    inductor's C++ backend: equal to the single-tensor path to float32 rounding (the compiler
    decides where to fuse multiply-adds, so the last bit differs: measured here up to 7e-7
    relative; a sign flip of Lion's interpolation on such a tie would move a coordinate by
    2 lr, which these draws do not hit), and one graph per update however lr changes."""
    from descent.optim.lion import _single_tensor_lion
    from descent.optim.sophia import _single_tensor_sophia

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters["stats"]
    graphs = counters["unique_graphs"]
    generator = torch.Generator().manual_seed(6)
    shapes = [(3, 5), (7,)]
    start = [torch.randn(s, generator=generator) for s in shapes]
    eager = {"p": [t.clone() for t in start], "m": [torch.zeros(s) for s in shapes]}
    graph = {"p": [t.clone() for t in start], "m": [torch.zeros(s) for s in shapes]}
    eager["h"], graph["h"] = [torch.zeros(s) for s in shapes], [torch.zeros(s) for s in shapes]
    for step in range(6):
        lr = 1e-2 / (1 + step)
        grads = [torch.randn(s, generator=generator) for s in shapes]
        _single_tensor_lion(
            eager["p"], grads, eager["m"], lr=lr, beta1=0.9, beta2=0.99, weight_decay=0.1
        )
        _compiled.compiled_step(
            "lion", graph["p"], grads, graph["m"], hp=_fused.lion_scalars(lr, 0.9, 0.99, 0.1)
        )
    for expected, actual in zip(eager["p"] + eager["m"], graph["p"] + graph["m"]):
        torch.testing.assert_close(actual, expected)
    assert counters["unique_graphs"] - graphs == 1

    for step in range(4):
        lr = 1e-2 / (1 + step)
        grads = [torch.randn(s, generator=generator) for s in shapes]
        hp = dict(lr=lr, beta1=0.9, rho_bs=0.2, weight_decay=0.1, eps=1e-15)
        steps = [torch.tensor(0.0) for _ in shapes]
        _single_tensor_sophia(eager["p"], grads, eager["m"], eager["h"], steps, **hp)
        _compiled.compiled_step(
            "sophia", graph["p"], grads, graph["m"], graph["h"], hp=_fused.sophia_scalars(**hp)
        )
        estimates = [torch.randn(s, generator=generator) for s in shapes]
        for h, e in zip(eager["h"], estimates):
            h.mul_(0.99).addcmul_(e, e, value=0.01)
        _compiled.compiled_step("hessian", graph["h"], estimates, hp=[0.99, 0.01], square=True)
    for expected, actual in zip(
        eager["p"] + eager["m"] + eager["h"], graph["p"] + graph["m"] + graph["h"]
    ):
        torch.testing.assert_close(actual, expected)
    assert counters["unique_graphs"] - graphs == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", [Lion, Sophia], ids=lambda c: c.__name__)
def test_cuda_fused_is_opt_in_and_matches_single_tensor(cls, kernel_calls):
    """On CUDA fused=None keeps the foreach path; fused=True runs the compiled graphs, equal
    to the single-tensor path to float32 rounding (see the test above)."""
    kwargs = {"bs": 4} if cls is Sophia else {}
    results = []
    for path in ("single", "default", "fused"):
        generator = torch.Generator().manual_seed(7)
        params = [torch.nn.Parameter(torch.randn(s, generator=generator).cuda()) for s in SHAPES]
        optimizer = cls(params, lr=1e-2, weight_decay=0.1, **kwargs, **PATHS[path])
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator).cuda()
            optimizer.step()
            if cls is Sophia:
                optimizer.update_hessian()
        results.append(_snapshot(optimizer, params))
    assert not kernel_calls
    for expected, actual in zip(results[0], results[2]):
        torch.testing.assert_close(actual, expected)
