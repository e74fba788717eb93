"""The C kernels behind the fused CPU updates: source, build, load.

A small C kernel compiled once per process (and cached on disk) with the system C compiler,
loaded through ``ctypes`` and called once per param group and dtype with arrays of the
tensors' data pointers (:mod:`descent.optim._fused` makes the calls). Why not
torch.compile/inductor: compiled over lists of tensors it generates one kernel per tensor, so
compile time grows with the tensor count (minutes, or never, for 2,000 tensors), and a
compiled single-tensor kernel called per tensor pays a guard check per call. The C kernel
takes any number of tensors for one call, needs about a second to build, and hyperparameters
are plain arguments, so a changing learning rate never recompiles.

The arithmetic is the single-tensor path's, operation for operation, with ``fma`` exactly
where ATen's CPU kernels fuse (``add(alpha=)`` and ``addcmul``: measured, not assumed), so the
results are bitwise equal to the single-tensor path; the tests check it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

_SOURCE = r"""
#include <stdint.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Elements per thread below which the work stays on one thread. */
#define MIN_PER_THREAD 32768

typedef void (*segment_fn)(void **ptrs, int64_t count, int64_t t, int64_t lo, int64_t hi,
                           const double *hp);

/* Split the concatenation of all tensors into one contiguous range per thread (aligned to
   16 elements) and let each thread walk the tensors that overlap its range. */
static void run(segment_fn fn, void **ptrs, int64_t count, const int64_t *sizes,
                const double *hp, int threads) {
    int64_t total = 0;
    for (int64_t t = 0; t < count; t++) total += sizes[t];
    if (threads < 1) threads = 1;
    if (total / MIN_PER_THREAD < threads) threads = (int)(total / MIN_PER_THREAD);
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int id = 0, n = 1;
#ifdef _OPENMP
        id = omp_get_thread_num();
        n = omp_get_num_threads();
#endif
        int64_t blocks = (total + 15) / 16;
        int64_t begin = (blocks * id / n) * 16, end = (blocks * (id + 1) / n) * 16;
        if (end > total) end = total;
        int64_t offset = 0;
        for (int64_t t = 0; t < count && offset < end; t++) {
            int64_t lo = begin > offset ? begin - offset : 0;
            int64_t hi = end - offset < sizes[t] ? end - offset : sizes[t];
            if (lo < hi) fn(ptrs, count, t, lo, hi, hp);
            offset += sizes[t];
        }
    }
}

#define SIGN(T, x) ((T)(((x) > 0) - ((x) < 0)))

/* hp: decay = 1 - lr*wd, -lr, beta1, 1 - beta1, beta2, 1 - beta2 (doubles, cast like ATen
   casts a Python scalar). ptrs: p[count], g[count], m[count]. */
#define LION(T, FMA, NAME)                                                                  \
static void NAME##_segment(void **ptrs, int64_t count, int64_t t, int64_t lo, int64_t hi,   \
                           const double *hp) {                                              \
    T *restrict p = (T *)ptrs[t];                                                           \
    const T *restrict g = (const T *)ptrs[count + t];                                       \
    T *restrict m = (T *)ptrs[2 * count + t];                                               \
    const T decay = (T)hp[0], neg_lr = (T)hp[1], b1 = (T)hp[2], a1 = (T)hp[3];              \
    const T b2 = (T)hp[4], a2 = (T)hp[5];                                                   \
    for (int64_t i = lo; i < hi; i++) {                                                     \
        T gi = g[i], mi = m[i];                                                             \
        T c = FMA(gi, a1, mi * b1);                                                         \
        p[i] = FMA(SIGN(T, c), neg_lr, p[i] * decay);                                       \
        m[i] = FMA(gi, a2, mi * b2);                                                        \
    }                                                                                       \
}                                                                                           \
void NAME(void **ptrs, int64_t count, const int64_t *sizes, const double *hp, int threads) {\
    run(NAME##_segment, ptrs, count, sizes, hp, threads);                                   \
}

/* hp: decay = 1 - lr*wd, -lr, beta1, 1 - beta1, rho*bs, eps.
   ptrs: p, g, m, h (count each). */
#define SOPHIA(T, FMA, NAME)                                                                \
static void NAME##_segment(void **ptrs, int64_t count, int64_t t, int64_t lo, int64_t hi,   \
                           const double *hp) {                                              \
    T *restrict p = (T *)ptrs[t];                                                           \
    const T *restrict g = (const T *)ptrs[count + t];                                       \
    T *restrict m = (T *)ptrs[2 * count + t];                                               \
    const T *restrict h = (const T *)ptrs[3 * count + t];                                   \
    const T decay = (T)hp[0], neg_lr = (T)hp[1], b1 = (T)hp[2], a1 = (T)hp[3];              \
    const T rho_bs = (T)hp[4], eps = (T)hp[5];                                              \
    for (int64_t i = lo; i < hi; i++) {                                                     \
        T mi = FMA(g[i], a1, m[i] * b1);                                                    \
        T hi_ = h[i];                                                                       \
        T den = (hi_ < 0 ? (T)0 : hi_) * rho_bs + eps;                                      \
        T r = (mi < 0 ? -mi : mi) / den;                                                    \
        r = r > (T)1 ? (T)1 : r;                                                            \
        m[i] = mi;                                                                          \
        p[i] = FMA(SIGN(T, mi) * neg_lr, r, p[i] * decay);                                  \
    }                                                                                       \
}                                                                                           \
void NAME(void **ptrs, int64_t count, const int64_t *sizes, const double *hp, int threads) {\
    run(NAME##_segment, ptrs, count, sizes, hp, threads);                                   \
}

/* hp: beta2, 1 - beta2, square (1: fold in e*e, GNB; 0: fold in e, Hutchinson).
   ptrs: h, e (count each). */
#define HESSIAN(T, FMA, NAME)                                                               \
static void NAME##_segment(void **ptrs, int64_t count, int64_t t, int64_t lo, int64_t hi,   \
                           const double *hp) {                                              \
    T *restrict h = (T *)ptrs[t];                                                           \
    const T *restrict e = (const T *)ptrs[count + t];                                       \
    const T b2 = (T)hp[0], a2 = (T)hp[1];                                                   \
    if (hp[2] != 0) {                                                                       \
        for (int64_t i = lo; i < hi; i++) h[i] = FMA(a2 * e[i], e[i], h[i] * b2);           \
    } else {                                                                                \
        for (int64_t i = lo; i < hi; i++) h[i] = FMA(e[i], a2, h[i] * b2);                  \
    }                                                                                       \
}                                                                                           \
void NAME(void **ptrs, int64_t count, const int64_t *sizes, const double *hp, int threads) {\
    run(NAME##_segment, ptrs, count, sizes, hp, threads);                                   \
}

LION(float, fmaf, lion_float32)
LION(double, fma, lion_float64)
SOPHIA(float, fmaf, sophia_float32)
SOPHIA(double, fma, sophia_float64)
HESSIAN(float, fmaf, hessian_float32)
HESSIAN(double, fma, hessian_float64)

void add_one_float32(float **steps, int64_t count) {
    for (int64_t t = 0; t < count; t++) *steps[t] += 1.0f;
}
"""

# -ffp-contract=off: no fused multiply-add except the explicit fma() calls above, which sit
# exactly where ATen's kernels fuse; anything else would change the last bit.
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC"]
_DTYPES = {torch.float32: "float32", torch.float64: "float64"}

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None
compile_seconds: float | None = None
"""Seconds this process spent building (or loading from the disk cache) the kernels."""


def _cache_dir() -> Path:
    root = os.environ.get("DESCENT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "descent"
    )
    return Path(root) / "fused"


def cached_library(
    name: str, source: str, suffix: str, commands: list[list[str]], *key: str, build: bool = True
) -> Path | None:
    """The shared library built from ``source`` with the first of ``commands`` that works,
    from the disk cache or built into it now (``build=False``: None where it is not built
    yet). The file name hashes the source, the commands and ``key`` (whatever else the binary
    depends on)."""
    digest = hashlib.sha256("\0".join([source, *map(" ".join, commands), *key]).encode())
    target = _cache_dir() / f"{name}-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        if not build:
            return None
        _build(source, suffix, commands, target)
    return target


def _build(source: str, suffix: str, commands: list[list[str]], target: Path) -> None:
    """Compile ``source`` (a file ending in ``suffix``) with the first of ``commands`` that
    succeeds (``{source}`` and ``{output}`` stand for the paths) and install the shared library
    at ``target`` atomically (a concurrent process sees the old file or the new, never half)."""
    with tempfile.TemporaryDirectory() as scratch:
        source_path = Path(scratch) / f"source{suffix}"
        source_path.write_text(source)
        output = Path(scratch) / "library.so"
        for command in commands:
            command = [
                part.format(source=source_path, output=output) if "{" in part else part
                for part in command
            ]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode == 0:
                break
        else:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(output, staged)
        os.replace(staged, target)


def _load() -> ctypes.CDLL | None:
    """Build (first use) or load the kernels; ``None`` where no C compiler works."""
    global _library, _failure, compile_seconds
    if _library is not None or _failure is not None:
        return _library
    with _lock:
        if _library is not None or _failure is not None:
            return _library
        started = time.perf_counter()
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None or sys.platform == "win32":
            _failure = "no C compiler found (set CC)"
            return None
        head, tail = [compiler, *_FLAGS], ["{source}", "-o", "{output}", "-lm"]
        commands = [[*head, "-fopenmp", *tail], [*head, *tail]]
        try:
            # -march=native binds the binary to this processor: the key names it.
            path = cached_library("fused", _SOURCE, ".c", commands, platform.machine(), _cpu_name())
            library = ctypes.CDLL(str(path))
        except (OSError, RuntimeError) as error:
            _failure = str(error)
            return None
        kernel = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        for name in ("lion", "sophia", "hessian"):
            for dtype in _DTYPES.values():
                function = getattr(library, f"{name}_{dtype}")
                function.argtypes = kernel
                function.restype = None
        library.add_one_float32.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        library.add_one_float32.restype = None
        _library = library
        compile_seconds = time.perf_counter() - started
        return _library


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("model name", "flags")):
                    return line
    except OSError:
        pass
    return platform.processor()


def available(device: torch.device | str = "cpu") -> bool:
    """Whether the fused kernels can run on ``device`` (building them on first call)."""
    return torch.device(device).type == "cpu" and _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is false on CPU, or ``None``."""
    _load()
    return _failure
