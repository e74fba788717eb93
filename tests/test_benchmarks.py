"""The benchmark scripts still run: a tiny layout, one round, the table written to a file.

Their numbers are measured by hand (benchmarks/RESULTS.md); here only that the code path from
contenders to the written table works, so a change elsewhere cannot leave them broken.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from descent.optim import _gather, _kernels

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def step_time(monkeypatch, tmp_path):
    # The script points the compile caches at fresh directories on import (cold compiles);
    # keep this process's caches, and restore the environment after the test.
    monkeypatch.setenv("DESCENT_CACHE_DIR", str(_kernels._cache_dir().parent))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("step_time")
    monkeypatch.setitem(module.LAYOUTS, "tiny", ("tiny layout", lambda: [(40, 50), (3,)] * 3))
    return module


def test_step_time_writes_its_table(step_time, tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other section\n\nkept\n")
    only = "descent lion,torch adamw fused"
    step_time.main(["--layouts", "tiny", "--only", only, "--rounds", "2", "--write", str(results)])
    text = results.read_text()
    assert "## Other section\n\nkept" in text
    assert "## Optimizer step time (issue 4)" in text
    assert "**tiny layout** (6 tensors, 0.0M float32 parameters)" in text
    rows = {
        match[0]: match[1]
        for match in re.findall(r"^\| ([^|]+?) \| [0-9.]+ \| ([0-9.]+|\(floor\)) \|", text, re.M)
    }
    assert set(rows) == {
        "descent Lion fused",
        "descent Lion foreach",
        "descent Lion single-tensor",
        "torch AdamW fused",
        "triad a += s*c (floor)",
    }
    assert all(float(ratio) > 0 for name, ratio in rows.items() if not name.startswith("triad"))


def test_step_time_refuses_cuda_without_a_gpu(step_time, capsys):
    if step_time.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit):
        step_time.main(["--device", "cuda"])
    assert "CUDA is not available here" in capsys.readouterr().err


def test_plan_overhead_runs(monkeypatch, step_time, capsys):
    module = importlib.import_module("plan_overhead")
    monkeypatch.setattr(sys, "argv", ["plan_overhead.py", "--layout", "tiny", "--rounds", "2"])
    if not _gather.available():
        with pytest.raises(SystemExit, match="C\\+\\+ gather is unavailable"):
            module.main()
        return
    module.main()
    out = capsys.readouterr().out
    assert "tiny: 6 tensors" in out
    assert re.search(r"the C\+\+ gather alone\s+[0-9.]+ ms", out)
