"""The gradient gather behind the fused plans: one C++ call instead of a Python pass per check.

On thousands of small tensors a fused step's kernel runs at the memory-bandwidth floor, and
what is left is reading every parameter's gradient and checking it: the tensors' metadata
(TensorImpl, autograd meta, the gradient's TensorImpl and storage) is out of cache after a
step streamed hundreds of MiB, and each Python pass over 2,000 tensors costs about 0.5 ms.
Here a plan registers its parameters once (:func:`create`); each step, :func:`gather` walks
them in C++ with the next tensors' metadata prefetched, checks each parameter and gradient,
and writes the gradients' data pointers into the kernel's pointer array.

A small custom op library against libtorch (``torch.ops.descent_fused``), built once per
machine with the system C++ compiler and torch's own headers (about 8 s on 2 cores) and
cached next to the C kernels. Where it cannot be built or loaded, :func:`available` is false
and the plans check the gradients in Python (same results, slower on many small tensors).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

from descent.optim import _kernels

_SOURCE = r"""
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

struct Plan {
  std::vector<at::Tensor> params;  // the rows; held: a parameter never dies while its plan lives
  std::vector<at::Tensor> idle;    // the group's parameters without a gradient at creation
  std::vector<void*> pointers;
  std::vector<int64_t> numels;
  c10::ScalarType dtype;
};

// The lock guards the map only: a walk holds its plan by shared_ptr, so a release (say from
// a garbage-collection finalizer that a tensor's Python dispatch triggers mid-walk) neither
// waits for the walk nor frees the plan under it.
std::mutex lock;
std::unordered_map<int64_t, std::shared_ptr<const Plan>> plans;
int64_t next_handle = 1;

int64_t create(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& idle,
               c10::ScalarType dtype) {
  auto plan = std::make_shared<Plan>(Plan{params, idle, {}, {}, dtype});
  for (const auto& p : params) {
    plan->pointers.push_back(p.data_ptr());
    plan->numels.push_back(p.numel());
  }
  std::lock_guard<std::mutex> guard(lock);
  int64_t handle = next_handle++;
  plans.emplace(handle, std::move(plan));
  return handle;
}

void release(int64_t handle) {
  std::lock_guard<std::mutex> guard(lock);
  plans.erase(handle);
}

/* Prefetch the metadata the loop below reads, a few tensors ahead and one level of
   indirection per distance: the parameter's TensorImpl (16 ahead), its autograd meta and
   storage (12), the gradient's TensorImpl (8), the gradient's storage (4). Hints only: the
   loop itself reads through the public API. */
inline void prefetch(const std::vector<at::Tensor>& params, size_t i) {
  using torch::autograd::AutogradMeta;
  const size_t count = params.size();
  auto impl = [&](size_t j) { return params[j].unsafeGetTensorImpl(); };
  auto meta = [&](size_t j) { return static_cast<AutogradMeta*>(impl(j)->autograd_meta()); };
  auto lines = [](const void* address, int n) {
    for (int k = 0; k < n; k++) __builtin_prefetch(static_cast<const char*>(address) + 64 * k);
  };
  if (i + 16 < count) lines(impl(i + 16), 3);
  if (i + 12 < count) {
    if (auto* m = meta(i + 12)) lines(m, 2);
    lines(impl(i + 12)->unsafe_storage().unsafeGetStorageImpl(), 1);
  }
  if (i + 8 < count) {
    auto* m = meta(i + 8);
    if (m && m->grad_.defined()) lines(m->grad_.unsafeGetTensorImpl(), 3);
  }
  if (i + 4 < count) {
    auto* m = meta(i + 4);
    if (m && m->grad_.defined())
      lines(m->grad_.unsafeGetTensorImpl()->unsafe_storage().unsafeGetStorageImpl(), 1);
  }
}

/* 0: out[i] holds the data pointer of parameter i's gradient, for every i.
   1: some gradient is not a dense contiguous CPU tensor of the plan's dtype: take the general
      path this step.
   2: the plan is stale (a parameter's storage moved or its size changed; a gradient whose
      size differs from the plan's; a row without gradient or an idle parameter with one) or
      unknown: rebuild it. */
int64_t gather(int64_t handle, int64_t out_address) {
  std::shared_ptr<const Plan> held;
  {
    std::lock_guard<std::mutex> guard(lock);
    auto found = plans.find(handle);
    if (found == plans.end()) return 2;
    held = found->second;
  }
  const Plan& plan = *held;
  void** out = reinterpret_cast<void**>(out_address);
  int64_t status = 0;
  for (size_t i = 0; i < plan.params.size(); i++) {
    prefetch(plan.params, i);
    const at::Tensor& p = plan.params[i];
    if (p.data_ptr() != plan.pointers[i] || p.numel() != plan.numels[i]) return 2;
    const at::Tensor& g = p.grad();
    if (!g.defined()) return 2;
    if (g.layout() != c10::kStrided || !g.is_cpu() || g.scalar_type() != plan.dtype ||
        !g.is_contiguous()) {
      status = 1;
      continue;
    }
    if (g.numel() != plan.numels[i]) return 2;
    out[i] = g.data_ptr();
  }
  for (const auto& p : plan.idle)
    if (p.grad().defined()) return 2;
  return status;
}

}  // namespace

TORCH_LIBRARY(descent_fused, m) {
  m.def("create(Tensor[] params, Tensor[] idle, ScalarType dtype) -> int", &create);
  m.def("release(int handle) -> ()", &release);
  m.def("gather(int handle, int out) -> int", &gather);
}
"""

OK, GENERAL, STALE = 0, 1, 2
""":func:`gather`'s answers: pointers written; take the general path; rebuild the plan."""

_lock = threading.Lock()
_ops = None
_failure: str | None = None
compile_seconds: float | None = None
"""Seconds this process spent building (or loading from the disk cache) the library."""


def _load(build: bool = True):
    """The ops, loaded from the disk cache or built first; ``None`` where they cannot be (or,
    with ``build=False``, where they are not built yet)."""
    global _ops, _failure, compile_seconds
    if _ops is not None or _failure is not None:
        return _ops
    with _lock:
        if _ops is not None or _failure is not None:
            return _ops
        if os.environ.get("DESCENT_NO_GATHER"):
            _failure = "disabled by DESCENT_NO_GATHER"
            return None
        started = time.perf_counter()
        compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
        root = Path(torch.__file__).parent
        include, lib = root / "include", root / "lib"
        if compiler is None or sys.platform == "win32":
            _failure = "no C++ compiler found (set CXX)"
            return None
        if not (include / "torch" / "library.h").exists():
            _failure = f"torch's C++ headers are missing under {include}"
            return None
        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        head = [compiler, "-O2", "-w", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
        head += [f"-I{include}", f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}"]
        tail = ["{source}", "-o", "{output}", f"-L{lib}", f"-Wl,-rpath,{lib}", "-lc10"]
        tail.append("-ltorch_cpu")
        commands = [[*head, f"-std=c++{standard}", *tail] for standard in (20, 17)]
        try:
            path = _kernels.cached_library(
                "gather", _SOURCE, ".cpp", commands, torch.__version__, build=build
            )
            if path is None:
                return None
            torch.ops.load_library(str(path))
            _ops = torch.ops.descent_fused
        except (OSError, RuntimeError) as error:
            _failure = str(error)
            return None
        compile_seconds = time.perf_counter() - started
        return _ops


def available(build: bool = True) -> bool:
    """Whether the C++ gather can run (building it on first call; ``build=False``: only if
    it is built already, in this process or in the disk cache)."""
    return _load(build) is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is false, or ``None``."""
    _load()
    return _failure


def create(params: list[torch.Tensor], idle: list[torch.Tensor], dtype: torch.dtype) -> int:
    """Register a plan's rows ``params`` and the parameters ``idle`` that must stay without a
    gradient (all held until :func:`release`); returns the plan's handle."""
    return _load().create(params, idle, dtype)


def release(handle: int) -> None:
    if _ops is not None:
        _ops.release(handle)


def gather(handle: int, address: int) -> int:
    """Write the gradients' data pointers to the ``uint64`` array at ``address`` (one per
    parameter, in order); returns :data:`OK`, :data:`GENERAL` or :data:`STALE`."""
    return _ops.gather(handle, address)
