"""Kernel lab: fused masked softmax + cross-entropy, from one thread per row to the library's.

    NUMBA_ENABLE_CUDASIM=1 python kernels/cross_entropy.py   # validate every variant, no GPU
    python kernels/cross_entropy.py                          # on a GPU: validate, then time
    python kernels/cross_entropy.py --cpu                    # the CPU kernel vs NumPy

For logits (M, V) and targets (M,) (-100 = not predicted): forward writes the per-row loss
L_i - x_{i,t_i} and L_i = logsumexp_j x_ij; backward writes (e^{x - L} - onehot) * scale over
the logits. Each variant is a (forward, backward) pair, with one line on why it exists:

  v1  one thread per row, three sweeps (max, sum, loss): the textbook formula as a kernel;
      neighbouring threads read addresses V apart, so no load is coalesced.
  v2  one block per row, strided (coalesced) loads, two sweeps (max, then sum) each closed by a
      shared-memory tree reduction: the classic "reduce a row" kernel.
  v3  online softmax (running max and rescaled sum): the row is read once; still the
      shared-memory tree (this is the path the CUDA simulator runs).
  v4  v3 with warp-shuffle reductions: one barrier per row instead of log2(block).
  v5  v4 with four loads in flight per thread, and backward over the rows in reverse order so
      the rows the forward pass read last are still in L2: the library's kernel
      (tinymlm/kernels/cross_entropy.py), imported, not copied.

Every variant is validated at every block size against the float64 NumPy reference, on logits
with one large outlier per row (else the softmax is nearly uniform and the test means little),
ignored rows, V and M that are not multiples of the block, and outputs poisoned with NaN (an
element no thread writes fails), before any is timed. Validation reports every mismatch, not
only the first. Under the simulator (``tests/test_lab.py`` runs this file so) the simulator has
no warp shuffles: v4 and v5 run with their shared-memory-tree reduction there (v4 is then v3,
v5 keeps its four loads in flight and its reversed backward); their shuffles are validated on
the GPU, and compiled for the H100 by ``tests/test_kernel_cross_entropy.py``.

Kernels are made with ``tinymlm.kernels.launch.cuda_kernel`` (launch bounds) and started with
``launch`` (CuPy's current stream), as the library's are.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Validation launches tiny grids on purpose: Numba's under-utilisation warning is noise here.
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")

from numba import cuda, float32  # noqa: E402

from tinymlm.kernels import cross_entropy as fused  # noqa: E402
from tinymlm.kernels.launch import MAX_THREADS_PER_BLOCK, cuda_kernel, launch  # noqa: E402

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
IGNORE = -100
NEG_MAX = float32(np.finfo(np.float32).min)


def reference(logits, targets, scale):
    """Float64 per-row loss, log-sum-exp and gradient (softmax - onehot) * scale."""
    x = np.asarray(logits, dtype=np.float64)  # (M, V)
    m = x.max(axis=1, keepdims=True)  # (M, 1)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]  # (M,)
    valid = targets != IGNORE
    rows, t = np.arange(len(targets)), np.where(valid, targets, 0)
    loss = np.where(valid, lse - x[rows, t], 0.0)  # (M,)
    grad = np.exp(x - lse[:, None])  # (M, V)
    grad[rows, t] -= 1.0
    grad *= np.where(valid, scale, 0.0)[:, None]
    return loss, lse, grad


# --- v1: one thread per row ---------------------------------------------------------------------


@cuda_kernel(MAX_THREADS_PER_BLOCK)  # launched at every block size the lab tries
def naive_forward(logits, targets, ignore_index, loss, lse):
    row = cuda.grid(1)
    M, V = logits.shape
    if row >= M:
        return
    m = NEG_MAX
    for j in range(V):
        m = max(m, logits[row, j])
    s = float32(0)
    for j in range(V):
        s += math.exp(logits[row, j] - m)
    lse[row] = m + math.log(s)
    t = targets[row]
    loss[row] = float32(0) if t == ignore_index else lse[row] - logits[row, t]


@cuda_kernel(MAX_THREADS_PER_BLOCK)
def naive_backward(logits, targets, ignore_index, lse, scale, grad):
    row = cuda.grid(1)
    M, V = logits.shape
    if row >= M:
        return
    t = targets[row]
    k = float32(0) if t == ignore_index else scale[0]
    for j in range(V):
        g = math.exp(logits[row, j] - lse[row]) * k
        grad[row, j] = g - k if j == t else g


# --- v2: one block per row, two sweeps, shared-memory trees -------------------------------------

_two_pass = {}


def two_pass_forward(block):
    if block in _two_pass:
        return _two_pass[block]

    @cuda_kernel(block)
    def two_pass_forward_kernel(logits, targets, ignore_index, loss, lse):
        shared = cuda.shared.array(block, float32)
        row, tid = cuda.blockIdx.x, cuda.threadIdx.x
        V = logits.shape[1]
        m = NEG_MAX
        for j in range(tid, V, block):
            m = max(m, logits[row, j])
        shared[tid] = m
        cuda.syncthreads()
        stride = block // 2
        while stride > 0:
            if tid < stride:
                shared[tid] = max(shared[tid], shared[tid + stride])
            cuda.syncthreads()
            stride //= 2
        m = shared[0]
        cuda.syncthreads()  # everyone has read the max before the array is reused
        s = float32(0)
        for j in range(tid, V, block):
            s += math.exp(logits[row, j] - m)
        shared[tid] = s
        cuda.syncthreads()
        stride = block // 2
        while stride > 0:
            if tid < stride:
                shared[tid] += shared[tid + stride]
            cuda.syncthreads()
            stride //= 2
        if tid == 0:
            lse[row] = m + math.log(shared[0])
            t = targets[row]
            loss[row] = float32(0) if t == ignore_index else lse[row] - logits[row, t]

    _two_pass[block] = two_pass_forward_kernel
    return two_pass_forward_kernel


# --- the variants as (forward, backward) pairs -------------------------------------------------


def variant(name, block):
    """(forward(logits, targets) -> (loss, lse), backward(logits, targets, lse, scale))."""

    def run_forward(kernel, grid, threads):
        def forward(logits, targets):
            xp = _xp(logits)
            loss = xp.full(logits.shape[0], np.nan, np.float32)  # poisoned: unwritten -> NaN
            lse = xp.full(logits.shape[0], np.nan, np.float32)
            launch(kernel, grid(logits.shape[0]), threads, logits, targets, IGNORE, loss, lse)
            return loss, lse

        return forward

    def run_backward(kernel, grid, threads):
        def backward(logits, targets, lse, scale):
            launch(
                kernel, grid(logits.shape[0]), threads, logits, targets, IGNORE, lse, scale, logits
            )
            return logits

        return backward

    per_row = lambda M: M
    if name == "v1":
        by_thread = lambda M: (M + block - 1) // block
        return (
            run_forward(naive_forward, by_thread, block),
            run_backward(naive_backward, by_thread, block),
        )
    if name == "v2":
        backward = fused.cuda_backward_kernel("float32", block, False)
        return (
            run_forward(two_pass_forward(block), per_row, block),
            run_backward(backward, per_row, block),
        )
    shuffles, ilp, reverse = {
        "v3": (False, 1, False),
        "v4": (True, 1, False),
        "v5": (True, fused.ILP, True),
    }[name]
    shuffles = shuffles and not SIMULATOR  # the simulator has no warp shuffles
    return (
        run_forward(fused.cuda_forward_kernel("float32", block, ilp, shuffles), per_row, block),
        run_backward(fused.cuda_backward_kernel("float32", block, reverse), per_row, block),
    )


def _xp(a):
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy


def random_inputs(xp, M, V, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((M, V)).astype(np.float32)  # (M, V)
    logits[np.arange(M), rng.integers(0, V, M)] += np.float32(30)  # one large outlier per row
    targets = rng.integers(0, V, M).astype(np.int64)
    targets[::5] = IGNORE
    return xp.asarray(logits), xp.asarray(targets)


def to_numpy(a):
    return a if isinstance(a, np.ndarray) else a.get()


def validate(xp, names, blocks, M, V, tolerance=2e-5) -> list[str]:
    """Every variant at every block size against the reference; returns the mismatches."""
    logits, targets = random_inputs(xp, M, V, seed=M + V)
    host_logits, host_targets = to_numpy(logits), to_numpy(targets)
    want_loss, want_lse, want_grad = reference(host_logits, host_targets, 0.5)
    failures = []
    for name in names:
        for block in blocks:
            forward, backward = variant(name, block)
            loss, lse = forward(logits, targets)
            grad = backward(logits.copy(), targets, lse, xp.asarray([0.5], np.float32))
            bad = []
            for what, got, want in (
                ("loss", loss, want_loss),
                ("lse", lse, want_lse),
                ("grad", grad, want_grad),
            ):
                got = to_numpy(got)
                if not np.allclose(got, want, rtol=tolerance, atol=tolerance):  # NaN fails too
                    err = np.nanmax(np.abs(got - want)) if np.isfinite(got).any() else np.nan
                    bad.append(f"{what} (max |err| {err:.1e}, {np.isnan(got).sum()} NaN)")
            line = f"  {name} block {block:4d}  M={M} V={V}: " + ("ok" if not bad else "FAILED")
            print(line + "".join(f" {b}" for b in bad))
            failures += [f"{name} block {block} M={M} V={V}: {b}" for b in bad]
    return failures


def time_ms(fn, repeats=20):
    """Median milliseconds of fn() with CUDA events, after a warm-up call."""
    import cupy

    fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def benchmark(names, blocks, M=16384, V=30522):
    import cupy

    logits, targets = random_inputs(cupy, M, V)
    work = logits.copy()
    scale = cupy.asarray([1.0 / M], np.float32)
    gigabytes = logits.nbytes / 1e9
    print(
        f"M={M} V={V} float32: forward reads {gigabytes:.2f} GB, backward moves "
        f"{2 * gigabytes:.2f} GB"
    )
    for name in names:
        for block in blocks:
            forward, backward = variant(name, block)
            _, lse = forward(logits, targets)
            fwd = time_ms(lambda f=forward: f(logits, targets))
            bwd = time_ms(lambda b=backward, c=lse: b(work, targets, c, scale))
            print(
                f"  {name} block {block:4d}: forward {fwd:7.3f} ms ({gigabytes / fwd:6.0f} GB/s)"
                f"  backward {bwd:7.3f} ms ({2 * gigabytes / bwd:6.0f} GB/s)"
            )


def cpu_lab(M=600, V=30522):
    """The CPU kernel against the reference (validate, then time; numbers vary with load)."""
    logits, targets = random_inputs(np, M, V)
    want_loss, _, want_grad = reference(logits, targets, 0.5)
    loss, lse = fused.cpu_forward(logits, targets)
    grad = fused.cpu_backward(logits, targets, lse, 0.5)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-5, atol=2e-7)
    print(f"cpu kernel M={M} V={V}: ok")
    for label, fn in (
        ("numpy float64 reference", lambda: reference(logits, targets, 0.5)),
        (
            "numba cpu forward+backward",
            lambda: fused.cpu_backward(
                logits, targets, *fused.cpu_forward(logits, targets)[1:], 0.5
            ),
        ),
    ):
        start = time.perf_counter()
        for _ in range(5):
            fn()
        print(f"  {label}: {(time.perf_counter() - start) / 5 * 1e3:.1f} ms")


def main() -> int:
    names = ["v1", "v2", "v3", "v4", "v5"]
    if "--cpu" in sys.argv:
        cpu_lab()
        return 0
    if SIMULATOR:  # tiny shapes: M and V not multiples of the block, two block sizes
        print("CUDA simulator: validating every variant (tiny shapes, no timing)")
        failures = validate(np, names, [32, 64], M=5, V=77)
        failures += validate(np, names, [32], M=2, V=5)  # V smaller than the block
    else:
        print("validating every variant and block size")
        import cupy

        blocks = [128, 256, 512, 1024]
        failures = validate(cupy, names, blocks, M=300, V=30522)
        failures += validate(cupy, names, blocks, M=7, V=1001)
    if failures:
        print(f"{len(failures)} mismatches: no timing", file=sys.stderr)
        return 1
    if not SIMULATOR:
        print("timing")
        benchmark(names, blocks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
