"""Asking for CUDA where there is none: one line that says what to install or use, exit 2.

The command runs in a child process with ``CUDA_VISIBLE_DEVICES=""``, so CUDA sees no device
even on a GPU machine: the test runs (and means the same) everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinymlm import backend

ROOT = Path(__file__).resolve().parents[1]


def _without_gpu_env() -> dict:
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_train_with_device_cuda_and_no_gpu_exits_2_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    command = "-m tinymlm.train --device cuda --steps 1 --out".split() + [str(run_dir)]
    proc = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env=_without_gpu_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert "CuPy" in lines[0] and "--device cpu" in lines[0]
    assert not run_dir.exists(), "nothing is written when the device is refused"


@pytest.mark.skipif(backend.cuda_available(), reason="CuPy and a GPU are here")
def test_moving_to_cuda_without_cupy_says_what_to_install():
    x = np.ones(3, dtype=np.float32)
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"CuPy.*cuda13"):
            backend.to_device(x, "cuda")
    else:
        pytest.skip("CuPy is installed (but sees no GPU): the import error cannot happen")


# benchmarks/gpu_check.py without a GPU: tests/test_gpu_check.py
