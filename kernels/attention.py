"""Kernel lab: fused multi-head attention, from a naive CUDA kernel to FlashAttention-2.

    NUMBA_ENABLE_CUDASIM=1 python kernels/attention.py   # validate every variant, no GPU
    python kernels/attention.py                          # on a GPU: validate, then time

Attention for one (sequence, head) with n real keys (right padding) and scale 1/sqrt(d):
out_i = sum_{j<n} softmax_j(q_i . k_j / sqrt(d)) v_j. Shapes: q, k, v, out (B, H, S, d).

Forward variants (each one line on why it exists):
  v1  one thread per query row, three sweeps over K/V straight from global memory (max, sum,
      weighted sum): the textbook softmax written as a kernel; every row re-reads all of K, V.
  v2  a block of rows stages K/V tiles in shared memory, so each key is read from global memory
      once per block, not once per row; still two sweeps (the max must be known first).
  v3  online softmax (FlashAttention-2): one sweep, rescaling the running sum and output when
      the max grows; scale folded into exp2; saves the log-sum-exp. This is the library's
      kernel (tinymlm/kernels/attention.py), at its production tiles.
  v4  v3 with 128 rows per block: each staged tile serves twice the rows (forward only: the
      dK/dV kernel's two padded 128-row tables would need 66 KB of shared memory at d = 64).
  v5  v3 with 32 rows per block: more blocks in flight when B * H * S / 64 is small.
Backward: the library's three kernels (D = rowsum(dO * O); dK/dV per key block; dQ per query
block; no atomics) at the same tile choices as v3 to v5.

Validation (before any timing) compares every variant with the float64 reference on ragged
lengths, a sequence with no real token, a length that is no multiple of any tile and a few
large keys per row, with outputs poisoned with NaN first; it reports every mismatch, not only
the first. ``tests/test_lab.py`` runs it under the simulator. Kernels are made with
``tinymlm.kernels.launch.cuda_kernel`` (launch bounds) and started with ``launch`` (CuPy's
current stream), as the library's are.
"""

from __future__ import annotations

import math
import os
import sys
from functools import cache, partial

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Validation launches tiny grids on purpose: Numba's under-utilisation warning is noise here.
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")

from numba import cuda, float32  # noqa: E402

from tinymlm.kernels import attention as fused  # noqa: E402
from tinymlm.kernels.launch import cuda_kernel, launch  # noqa: E402

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

# ----------------------------------------------------------------------------------------------
# NumPy float64 reference
# ----------------------------------------------------------------------------------------------


def reference_forward(q, k, v, lengths, scale):
    """Returns (out, lse, probs) in float64; rows with no real key give out 0, lse -inf."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    seq = q.shape[2]
    real_key = np.arange(seq)[None, :] < np.asarray(lengths)[:, None]  # (B, S)
    scores = scale * q @ k.swapaxes(-1, -2)  # (B, H, S, S)
    scores = np.where(real_key[:, None, None, :], scores, -np.inf)
    row_max = scores.max(-1, keepdims=True)  # (B, H, S, 1)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    weights = np.exp(scores - row_max)  # padded keys: exactly 0
    total = weights.sum(-1, keepdims=True)  # (B, H, S, 1)
    probs = weights / np.where(total > 0, total, 1.0)  # (B, H, S, S)
    with np.errstate(divide="ignore"):
        lse = np.log(total[..., 0]) + row_max[..., 0]  # (B, H, S)
    return probs @ v, lse, probs


def reference_backward(q, k, v, grad_out, lengths, scale):
    """Returns (dq, dk, dv) in float64 (the softmax Jacobian written out; see the module)."""
    q, k, v, grad_out = (a.astype(np.float64) for a in (q, k, v, grad_out))
    _, _, probs = reference_forward(q, k, v, lengths, scale)
    dv = probs.swapaxes(-1, -2) @ grad_out  # (B, H, S, d)
    dp = grad_out @ v.swapaxes(-1, -2)  # (B, H, S, S)
    ds = probs * (dp - (probs * dp).sum(-1, keepdims=True))
    return scale * ds @ k, scale * ds.swapaxes(-1, -2) @ q, dv


# ----------------------------------------------------------------------------------------------
# v1: naive
# ----------------------------------------------------------------------------------------------


NAIVE_BLOCK = 32 if SIMULATOR else 128  # one thread per query row


@cuda_kernel(NAIVE_BLOCK)
def naive_forward_kernel(q, k, v, lengths, scale, out):
    heads = q.shape[1]
    b = cuda.blockIdx.y // heads
    h = cuda.blockIdx.y - b * heads
    row = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    dim = q.shape[3]
    if row >= q.shape[2]:
        return
    n = lengths[b]
    row_max = fused.MAX_START
    for j in range(n):
        s = float32(0.0)
        for c in range(dim):
            s += q[b, h, row, c] * k[b, h, j, c]
        row_max = max(row_max, s * scale)
    total = float32(0.0)
    for j in range(n):
        s = float32(0.0)
        for c in range(dim):
            s += q[b, h, row, c] * k[b, h, j, c]
        total += math.exp(s * scale - row_max)
    for c in range(dim):
        out[b, h, row, c] = float32(0.0)
    for j in range(n):
        s = float32(0.0)
        for c in range(dim):
            s += q[b, h, row, c] * k[b, h, j, c]
        p = math.exp(s * scale - row_max) / total
        for c in range(dim):
            out[b, h, row, c] += p * v[b, h, j, c]


# ----------------------------------------------------------------------------------------------
# v2: shared-memory tiles, two sweeps
# ----------------------------------------------------------------------------------------------


@cache
def tiled_forward_kernel(head_dim, block_q, block_k):
    D, BQ, BK = head_dim, block_q, block_k

    @cuda_kernel(BQ)
    def tiled_forward_kernel(q, k, v, lengths, scale, out):
        t = cuda.threadIdx.x
        heads = q.shape[1]
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y - b * heads
        row = cuda.blockIdx.x * BQ + t
        live = row < q.shape[2]
        n = lengths[b]
        k_tile = cuda.shared.array((BK, D), float32)
        v_tile = cuda.shared.array((BK, D), float32)
        q_row = cuda.local.array(D, float32)
        acc = cuda.local.array(D, float32)
        for c in range(D):
            q_row[c] = q[b, h, row, c] * scale if live else float32(0.0)
            acc[c] = float32(0.0)

        row_max = fused.MAX_START  # sweep 1: the maximum score
        for k0 in range(0, n, BK):
            for idx in range(t, BK * D, BQ):
                j = idx // D
                if k0 + j < n:
                    k_tile[j, idx - j * D] = k[b, h, k0 + j, idx - j * D]
            cuda.syncthreads()
            for j in range(min(BK, n - k0)):
                s = float32(0.0)
                for c in range(D):
                    s += q_row[c] * k_tile[j, c]
                row_max = max(row_max, s)
            cuda.syncthreads()

        total = float32(0.0)  # sweep 2: exponentials, their sum and the weighted values
        for k0 in range(0, n, BK):
            for idx in range(t, BK * D, BQ):
                j = idx // D
                if k0 + j < n:
                    k_tile[j, idx - j * D] = k[b, h, k0 + j, idx - j * D]
                    v_tile[j, idx - j * D] = v[b, h, k0 + j, idx - j * D]
            cuda.syncthreads()
            for j in range(min(BK, n - k0)):
                s = float32(0.0)
                for c in range(D):
                    s += q_row[c] * k_tile[j, c]
                p = math.exp(s - row_max)
                total += p
                for c in range(D):
                    acc[c] += p * v_tile[j, c]
            cuda.syncthreads()

        if live:
            inv = float32(1.0) / total if total > float32(0.0) else float32(0.0)
            for c in range(D):
                out[b, h, row, c] = acc[c] * inv

    return tiled_forward_kernel


# ----------------------------------------------------------------------------------------------
# Dispatch: every variant as forward(q, k, v, lengths, scale) -> out
# ----------------------------------------------------------------------------------------------


def _xp(a):
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy


def forward_v1(q, k, v, lengths, scale):
    xp = _xp(q)
    batch, heads, seq, _ = q.shape
    out = xp.full(q.shape, np.nan, np.float32)
    grid = ((seq + NAIVE_BLOCK - 1) // NAIVE_BLOCK, batch * heads)
    lengths = xp.asarray(lengths, dtype=np.int32)
    launch(naive_forward_kernel, grid, NAIVE_BLOCK, q, k, v, lengths, np.float32(scale), out)
    return out


def forward_v2(q, k, v, lengths, scale, block_q=64, block_k=16):
    xp = _xp(q)
    batch, heads, seq, dim = q.shape
    out = xp.full(q.shape, np.nan, np.float32)
    grid = ((seq + block_q - 1) // block_q, batch * heads)
    lengths = xp.asarray(lengths, dtype=np.int32)
    kernel = tiled_forward_kernel(dim, block_q, block_k)
    launch(kernel, grid, block_q, q, k, v, lengths, np.float32(scale), out)
    return out


def fused_variant(block_q, block_k=None):
    def forward(q, k, v, lengths, scale):
        return fused.attention_forward(q, k, v, lengths, scale, block_q=block_q, block_k=block_k)[0]

    def backward(q, k, v, grad_out, lengths, scale):
        out, lse = fused.attention_forward(q, k, v, lengths, scale, block_q, block_k)
        return fused.attention_backward(
            q, k, v, out, lse, grad_out, lengths, scale, block_q, block_k
        )

    return forward, backward


FORWARD = {"v1": forward_v1, "v2": forward_v2}
BACKWARD = {}
FORWARD["v3"], BACKWARD["v3"] = fused_variant(None)
FORWARD["v4"], _ = fused_variant(128)
FORWARD["v5"], BACKWARD["v5"] = fused_variant(32)


# ----------------------------------------------------------------------------------------------
# Validate, then time
# ----------------------------------------------------------------------------------------------


def random_inputs(xp, batch, heads, seq, dim, seed=0):
    """Inputs with a few large keys (a peaked softmax) and ragged lengths, one of them 0."""
    rng = np.random.default_rng(seed)
    q, k, v, grad_out = (
        rng.standard_normal((batch, heads, seq, dim)).astype(np.float32) for _ in range(4)
    )
    k[:, :, 1::7, :] *= np.float32(4.0)
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0], lengths[-1] = seq, 0
    return [xp.asarray(a) for a in (q, k, v, grad_out)], lengths


def to_numpy(a):
    return a if isinstance(a, np.ndarray) else a.get()


def validate(xp, batch, heads, seq, dim, tolerance=3e-5) -> list[str]:
    """Every forward and backward variant against the reference; returns the mismatches."""
    (q, k, v, grad_out), lengths = random_inputs(xp, batch, heads, seq, dim)
    host = [to_numpy(a) for a in (q, k, v, grad_out)]
    scale = 1.0 / math.sqrt(dim)
    want_out, _, _ = reference_forward(*host[:3], lengths, scale)
    want_grads = reference_backward(*host, lengths, scale)
    failures = []

    def check(what, got, want):
        got = to_numpy(got)
        err = np.abs(got - want).max() / max(1.0, np.abs(want).max())  # NaN if any is NaN
        ok = bool(err <= tolerance)
        print(f"  {what:12s} d={dim} S={seq}  max rel err {err:.2e} {'ok' if ok else 'FAILED'}")
        if not ok:
            failures.append(f"{what} d={dim} S={seq}: max rel err {err:.2e}")

    for name, forward in FORWARD.items():
        check(f"forward  {name}", forward(q, k, v, lengths, scale), want_out)
    for name, backward in BACKWARD.items():
        grads = backward(q, k, v, grad_out, lengths, scale)
        for label, got, want in zip(("dq", "dk", "dv"), grads, want_grads, strict=True):
            check(f"backward {name} {label}", got, want)
    return failures


def time_ms(fn, repeats=20):
    """Median milliseconds of fn() over CUDA events, after a warm-up."""
    import cupy

    fn()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def benchmark(batch=8, heads=12, dim=64):
    import cupy

    for seq in (128, 512, 2048):
        (q, k, v, grad_out), lengths = random_inputs(cupy, batch, heads, seq, dim)
        lengths[:] = seq  # time full sequences
        scale = 1.0 / math.sqrt(dim)
        flops = 4 * batch * heads * seq * seq * dim
        for name, forward in FORWARD.items():
            if name == "v1" and seq > 512:
                continue  # minutes at 2048
            ms = time_ms(partial(forward, q, k, v, lengths, scale))
            print(f"  forward  {name}  S={seq:5d}  {ms:8.3f} ms  {flops / ms / 1e9:6.2f} TFLOP/s")
        for name, backward in BACKWARD.items():
            ms = time_ms(partial(backward, q, k, v, grad_out, lengths, scale))
            tflops = 3.5 * flops / ms / 1e9  # forward + backward (about 2.5x the forward)
            print(f"  fwd+bwd  {name}  S={seq:5d}  {ms:8.3f} ms  {tflops:6.2f} TFLOP/s")


def main() -> int:
    if SIMULATOR:
        print("validating under the CUDA simulator (tiny shapes; no timing)")
        failures = validate(np, batch=3, heads=1, seq=21, dim=32)
        failures += validate(np, batch=2, heads=1, seq=9, dim=64)
    else:
        import cupy

        print(f"device: {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
        fused.POISON = True  # unwritten elements show up as NaN while validating
        failures = [f for dim in (32, 64) for f in validate(cupy, 4, 3, 300, dim)]
        fused.POISON = False
    if failures:
        print(f"{len(failures)} mismatches: no timing", file=sys.stderr)
        return 1
    print("all variants match the float64 reference")
    if not SIMULATOR:
        print("timing (B=8, H=12, d=64)")
        benchmark()
    return 0


if __name__ == "__main__":
    sys.exit(main())
