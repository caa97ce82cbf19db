"""The CUDA AdamW kernel (tinymlm/kernels/adamw.py): its numbers under Numba's CUDA simulator
against AdamW's reference path, and its PTX for the H100 (float32 stays float32, launch bound,
registers, no spills)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from numba import float32, float64, void

from tests import ptx as ptx_tools
from tinymlm.kernels import adamw

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_matches_the_reference_adamw_under_the_simulator():
    # NUMBA_ENABLE_CUDASIM must be set before numba is imported: a process of its own.
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "sim_adamw.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("dtype", [float32, float64], ids=["float32", "float64"])
def test_ptx_for_the_h100(dtype):
    a = dtype[::1]
    signature = void(a, a, a, a, *([dtype] * 8))
    ptx = ptx_tools.compile_for(adamw.adamw_kernel(), signature)
    if dtype is float32:
        assert not re.search(r"\.f64\b", ptx), "float64 arithmetic in the float32 kernel"
    assert ptx_tools.max_threads(ptx) == adamw.BLOCK
    report = ptx_tools.ptxas_report(ptx)
    ptx_tools.assert_fits(report, adamw.BLOCK, f"adamw {dtype}")
