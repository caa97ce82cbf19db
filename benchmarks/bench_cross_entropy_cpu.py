"""CPU: the fused Numba cross-entropy kernel against the NumPy reference path, same run.

    python benchmarks/bench_cross_entropy_cpu.py [--out benchmarks/results/cross_entropy_cpu.md]

Each row times F.cross_entropy(logits, targets) and the backward of that loss Function
(forward + backward, d loss / d logits) with the switch on "reference" (the plain NumPy
Function) and on "numba" (FusedCrossEntropy), in turn, on fresh copies of the same logits.
A third column times the other fusion the design allowed: the gradient computed in the forward
pass (one exp per logit instead of two) into a new array. The sweep over sizes gives the
"auto" choice for cross-entropy on the CPU in the dispatch table (``tinymlm/kernels``).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import time

import numba
import numpy as np
from numba import njit, prange

import tinymlm.nn.functional as F
from tinymlm import Tensor
from tinymlm.fileio import atomic_write_text
from tinymlm.kernels import use_kernels
from tinymlm.kernels.cpu_math import kernel_exp  # the kernels' SIMD-friendly e^x


@njit(parallel=True, fastmath=True, cache=True)
def _forward_with_grad(logits, targets, scale, loss, grad):
    """Loss and gradient in one pass per row: e^{x - m} stored, then normalised in place."""
    M, V = logits.shape
    for i in prange(M):
        row, g = logits[i], grad[i]
        m = row[0]
        for j in range(1, V):
            m = max(m, row[j])
        s = 0.0
        for j in range(V):
            e = kernel_exp(row[j] - m)
            g[j] = e
            s += e
        t = targets[i]
        if t < 0:
            loss[i] = 0.0
            g[:] = 0.0
            continue
        loss[i] = m + math.log(s) - row[t]
        c = scale / s
        for j in range(V):
            g[j] *= c
        g[t] -= scale


def fwd_with_grad(data, targets):
    M = data.shape[0]
    loss = np.empty(M, data.dtype)
    grad = np.empty_like(data)  # a new M x V array each step, as the Function would need
    count = max(int((targets >= 0).sum()), 1)
    _forward_with_grad(data, targets, data.dtype.type(1.0 / count), loss, grad)
    return loss.sum() / count, grad


def as_intermediate(data):
    """The logits as an intermediate Tensor (x * 1), as the MLM head's are (untimed)."""
    return Tensor(data, requires_grad=True) * 1.0


def loss_step(logits, targets, mode):
    """Forward and backward of the loss Function alone: the loss and d loss / d logits.

    The fused backward may write its gradient over the (intermediate) logits.
    """
    with use_kernels(mode):
        loss = F.cross_entropy(logits, targets)
    grad = loss._ctx.backward(np.ones((), logits.dtype))[0]  # the loss Function's own backward
    return float(loss.data), grad


def one_thread(step):
    """`step` with Numba's thread pool limited to the calling thread."""

    def run(arg):
        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return step(arg)
        finally:
            numba.set_num_threads(threads)

    return run


def best_ms(steps, data, repeats):
    """Best time of each (setup, step) over `repeats` rounds, run in turn within each round.

    The best, not the median (as timeit advises): on a shared machine a 2 ms step loses a
    10-20 ms time slice to other processes in about half the rounds, on either side.
    Interleaving keeps a burst of load from favouring one side; each step gets a fresh copy of
    the logits, prepared by its untimed setup, so neither finds the other's data in cache.
    """
    times = [[] for _ in steps]
    for _ in range(repeats + 1):
        for (setup, step), ts in zip(steps, times, strict=True):
            arg = setup(data.copy())
            start = time.perf_counter()
            step(arg)
            ts.append(time.perf_counter() - start)
    return [float(np.min(ts[1:])) * 1e3 for ts in times]  # the first round warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    sizes = [
        (600, 30522),
        (128, 30522),
        (64, 30522),
        (32, 30522),
        (16, 30522),
        (4, 30522),
        (64, 1000),
    ]
    sizes += [(8, 1000), (4, 100), (1, 100)]
    lines = [
        "| M | V | M·V | reference (ms) | fused numba (ms) | speed-up | fused, 1 thread (ms) "
        "| fwd-with-grad (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for M, V in sizes:
        data = rng.standard_normal((M, V)).astype(np.float32)
        data[np.arange(M), rng.integers(0, V, M)] += np.float32(20)
        targets = rng.integers(0, V, M)
        targets[::10] = -100
        loss_ref, grad_ref = loss_step(as_intermediate(data.copy()), targets, "reference")
        loss_fused, grad_fused = loss_step(as_intermediate(data.copy()), targets, "numba")
        loss_wg, grad_wg = fwd_with_grad(data.copy(), targets)
        assert abs(loss_ref - loss_fused) <= 1e-5 * abs(loss_ref), (loss_ref, loss_fused)
        np.testing.assert_allclose(grad_fused, grad_ref, rtol=1e-4, atol=1e-8)
        np.testing.assert_allclose(grad_wg, grad_ref, rtol=1e-4, atol=1e-8)
        r = args.repeats if M * V > 100_000 else 50
        ref, fused, fused_1, wg = best_ms(
            [
                (as_intermediate, lambda x, t=targets: loss_step(x, t, "reference")),
                (as_intermediate, lambda x, t=targets: loss_step(x, t, "numba")),
                (as_intermediate, one_thread(lambda x, t=targets: loss_step(x, t, "numba"))),
                (lambda d: d, lambda d, t=targets: fwd_with_grad(d, t)),
            ],
            data,
            r,
        )
        lines.append(
            f"| {M} | {V} | {M * V:,} | {ref:.3f} | {fused:.3f} | {ref / fused:.2f}× | "
            f"{fused_1:.3f} | {wg:.3f} |"
        )
        print(lines[-1], flush=True)

    header = [
        "# Cross-entropy on the CPU: fused Numba kernel vs NumPy reference",
        "",
        f"- date: {datetime.date.today()}; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, numba threads {numba.get_num_threads()}; "
        f"numpy {np.__version__}, numba {numba.__version__}",
        "- command: `PYTHONPATH=. python benchmarks/bench_cross_entropy_cpu.py --out "
        "benchmarks/results/cross_entropy_cpu.md`",
        f"- load average (1 min) before / after the run: {load_before:.2f} / "
        f"{os.getloadavg()[0]:.2f} (other processes share the cores: threaded numbers suffer most)",
        "- each time: the best of interleaved rounds of forward + backward "
        "(float32, 10% of rows -100)",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
