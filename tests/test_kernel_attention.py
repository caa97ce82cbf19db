"""The fused attention kernels, tested without a GPU.

1. Under Numba's CUDA simulator (in a subprocess: the simulator must be chosen before Numba is
   imported) against a float64 reference: forward output, log-sum-exp, dQ, dK, dV, on shapes
   that are not multiples of the tile, ragged lengths and a sequence with no real token.
2. Compiled to PTX for the H100 (compute capability 9.0) for every specialization the library
   launches, with its own options (fastmath, launch bound): no float64 instruction, the
   launch bound equal to the block size, and (with ptxas) no spills, no local-memory stack,
   registers that fit the block, at most 48 KB of static shared memory.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")
from numba import float32, int32  # noqa: E402

from tests import ptx as ptx_tools  # noqa: E402
from tinymlm.kernels import attention  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIM_CASES = ("d32_tiles8", "d64_tiles8x4", "d64_production_tiles")
QUANTITIES = ("out", "lse", "dq", "dk", "dv")
SHARED_LIMIT = 48 * 1024


@pytest.fixture(scope="module")
def simulated():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "sim_attention.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", SIM_CASES)
@pytest.mark.parametrize("quantity", QUANTITIES)
def test_simulator_matches_float64_reference(simulated, case, quantity):
    result = simulated[case][quantity]
    assert result["nan"] == 0, f"{quantity}: elements left unwritten (NaN poison survived)"
    assert result["nonfinite_match"], f"{quantity}: -inf log-sum-exp of an empty row differs"
    # float32 accumulation over at most a few dozen terms of size ~1
    assert result["max_abs_err"] <= 2e-5 * max(1.0, result["max_abs_ref"]), result


@pytest.mark.parametrize("case", SIM_CASES)
def test_simulator_padding_and_dtypes(simulated, case):
    result = simulated[case]
    assert result["padded_key_grads_zero"], "padded keys must get exactly zero dK and dV"
    assert result["empty_out_zero"], "a sequence with no real token must give zeros"
    assert result["dtype"] == ["float32"] * 5


def test_autograd_function_under_simulator(simulated):
    result = simulated["autograd"]
    assert result["shape"] == [1, 2, 11, 32]
    for name, err in result["max_abs_err"].items():
        assert err <= 2e-5, (name, err)


def test_dispatch_matches_reference_path_and_declines_what_it_cannot_take(simulated):
    result = simulated["dispatch"]
    if "skipped" in result:
        pytest.skip(result["skipped"])
    for name, err in result["max_abs_err"].items():
        assert err <= 2e-5, (name, err)
    assert result["declines_inner_padding"], "inner padding must fall back to the reference path"
    assert result["declines_all_padding"], "an all-padding sequence must use the reference path"
    assert result["no_mask_runs"]


def test_auto_mode_measures_each_shape_once_and_follows_the_measurement(simulated):
    result = simulated["choice"]
    assert result["keys"] == ["fused", "fused_ms", "reference_ms"]
    assert result["times_positive"] and result["follows_choice"] and result["measured_once"]


@pytest.mark.parametrize("fused_s, reference_s, expected", [(1.0, 2.0, True), (3.0, 2.0, False),
                                                              (2.0, 2.0, True)])
def test_choose_by_timing_takes_the_smaller_median(fused_s, reference_s, expected):
    now = [0.0]
    calls = {"fused": 0, "reference": 0}
    # one slow outlier per path must not decide: the median does
    durations = {"fused": iter([9.0, fused_s, 50.0, fused_s, fused_s]),
                 "reference": iter([9.0, reference_s, reference_s, 50.0, reference_s])}

    def timed(name):
        def run():
            calls[name] += 1
            now[0] += next(durations[name])
        return run

    choice = attention.choose_by_timing(timed("fused"), timed("reference"),
                                        clock=lambda: now[0], repeats=4)
    assert calls == {"fused": 5, "reference": 5}  # a warm-up each, then 4 timed runs each
    assert choice["fused"] is expected
    assert choice["fused_ms"] == pytest.approx(1e3 * fused_s)
    assert choice["reference_ms"] == pytest.approx(1e3 * reference_s)


def test_numpy_arrays_outside_the_simulator_are_refused():
    if attention.numba_config.ENABLE_CUDASIM:
        pytest.skip("this process runs the simulator")
    q = np.zeros((1, 1, 4, 32), np.float32)
    with pytest.raises(ValueError, match="CuPy"):
        attention.attention_forward(q, q, q, np.array([4]), 0.1)


def test_supports_reports_what_the_kernels_handle():
    assert attention.supports(np.zeros((2, 3, 5, 64), np.float32))
    assert attention.supports(np.zeros((2, 3, 5, 32), np.float32))
    assert not attention.supports(np.zeros((2, 3, 5, 64), np.float64))
    assert not attention.supports(np.zeros((2, 3, 5, 128), np.float32))
    assert not attention.supports(np.zeros((2, 5, 64), np.float32))


# ------------------------------------------------------------------------------------------
# PTX for compute capability 9.0
# ------------------------------------------------------------------------------------------

LENGTHS = int32[:]
# "A": any strides (the (B, S, H, d) -> (B, H, S, d) views the attention layer passes);
# "C": contiguous arrays (a different specialization, compiled when those are passed).
LAYOUTS = {
    "A": (float32[:, :, :, :], float32[:, :, :]),
    "C": (float32[:, :, :, ::1], float32[:, :, ::1]),
}


def specializations(head_dim, layout):
    """(name, kernel, signature) for each kernel the library launches at head_dim."""
    a4, a3 = LAYOUTS[layout]
    sizes = attention.tiles(head_dim)
    bq, bk = sizes["block_q"], sizes["block_k"]
    grads = (a4, a4, a4, a4, a3, a3, LENGTHS, float32, float32)
    return [
        (
            "forward",
            attention.forward_kernel(head_dim, bq, bk),
            (a4, a4, a4, LENGTHS, float32, a4, a3),
        ),
        ("delta", attention.delta_kernel(head_dim, bq), (a4, a4, a3)),
        ("dkdv", attention.dkdv_kernel(head_dim, bq, bk), (*grads, a4, a4)),
        ("dq", attention.dq_kernel(head_dim, bq, bk), (*grads, a4)),
    ]


CASES = [
    (d, name, layout)
    for d in (32, 64)
    for name in ("forward", "delta", "dkdv", "dq")
    for layout in LAYOUTS
]


def block_of(head_dim, name) -> int:
    """The threads per block each kernel is launched with (attention_forward / _backward)."""
    return attention.tiles(head_dim)["block_q"]


@functools.cache  # both PTX tests read the same compilation
def compile_for_h100(head_dim, name, layout):
    ((kernel, signature),) = [
        (k, sig) for n, k, sig in specializations(head_dim, layout) if n == name
    ]
    return ptx_tools.compile_for(kernel, signature)


@pytest.mark.parametrize(("head_dim", "name", "layout"), CASES)
def test_ptx_is_float32_bounded_and_fits_shared_memory(head_dim, name, layout):
    ptx = compile_for_h100(head_dim, name, layout)
    assert not re.search(r"\.f64\b", ptx), "a float64 instruction (a bare Python float literal?)"
    assert ptx_tools.max_threads(ptx) == block_of(head_dim, name), "launch bound"
    static_shared = sum(int(n) for n in re.findall(r"\.shared \.align \d+ \.b8 \w+\[(\d+)\]", ptx))
    assert static_shared <= SHARED_LIMIT, static_shared


@pytest.mark.parametrize(("head_dim", "name", "layout"), CASES)
def test_ptxas_reports_no_spills_and_registers_that_fit_the_block(head_dim, name, layout):
    report = ptx_tools.ptxas_report(compile_for_h100(head_dim, name, layout))
    print(
        f"d={head_dim} {name} layout {layout}: {report['registers']} registers, stack "
        f"{report['stack']} B, spills {report['spill_stores']}/{report['spill_loads']} B, "
        f"smem {report['shared']} B"
    )
    ptx_tools.assert_fits(report, block_of(head_dim, name), f"d={head_dim} {name} {layout}")
