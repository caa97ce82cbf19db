"""The CUDA kernels of the fused cross-entropy, built per dtype and block size.

One block per row of logits. Forward: each thread folds its strided slice of the row into its
own online-softmax state (m, s), ``ILP`` loads in flight at a time; the block merges the states
with warp shuffles and one shared-memory step (a shared-memory tree under the simulator, which
has no shuffles) and writes the row's log-sum-exp and loss. Backward: e^{x - L} - onehot, times
the scale, over the row, the rows in reverse so that the last rows read are the first reused
from L2. ``tinymlm.kernels.cross_entropy`` launches them; the mathematics is in its docstring.
"""

from __future__ import annotations

import math
from functools import cache

import numba
import numpy as np
from numba import config as numba_config
from numba import cuda

from tinymlm.kernels.launch import cuda_kernel

WARP = 32
DEFAULT_BLOCK = 512  # threads per row on the GPU: a first choice, until the lab's sweep on a GPU
ILP = 4  # loads each thread keeps in flight on the GPU
USE_SHUFFLES = not numba_config.ENABLE_CUDASIM  # the simulator has no warp shuffles


@cache
def _block_reduce(dtype: str, block: int, shuffles: bool):
    """A device function merging every thread's (m, s) into the row's (m, s), for all threads.

    Merging two online-softmax states: m = max(m1, m2), s = s1 e^{m1 - m} + s2 e^{m2 - m}.
    """
    ftype = numba.float32 if dtype == "float32" else numba.float64
    warps = block // WARP

    @cuda.jit(device=True, inline=True)
    def merge(m1, s1, m2, s2):
        m = max(m1, m2)
        return m, s1 * math.exp(m1 - m) + s2 * math.exp(m2 - m)

    if shuffles:

        @cuda.jit(device=True, inline=True)
        def warp_reduce(m, s):
            offset = WARP // 2
            while offset > 0:
                m2 = cuda.shfl_xor_sync(0xFFFFFFFF, m, offset)
                s2 = cuda.shfl_xor_sync(0xFFFFFFFF, s, offset)
                m, s = merge(m, s, m2, s2)
                offset //= 2
            return m, s

        @cuda.jit(device=True, inline=True)
        def reduce(m, s):
            shared_m = cuda.shared.array(warps, ftype)
            shared_s = cuda.shared.array(warps, ftype)  # own line: the simulator aliases else
            tid = cuda.threadIdx.x
            m, s = warp_reduce(m, s)
            if tid % WARP == 0:
                shared_m[tid // WARP] = m
                shared_s[tid // WARP] = s
            cuda.syncthreads()
            # Every warp merges the per-warp states itself: no second barrier is needed.
            lane = tid % WARP
            m = shared_m[lane] if lane < warps else shared_m[0]
            s = shared_s[lane] if lane < warps else ftype(0)
            return warp_reduce(m, s)

        return reduce

    @cuda.jit(device=True, inline=True)
    def reduce(m, s):
        shared_m = cuda.shared.array(block, ftype)
        shared_s = cuda.shared.array(block, ftype)  # own line: the simulator aliases else
        tid = cuda.threadIdx.x
        shared_m[tid] = m
        shared_s[tid] = s
        cuda.syncthreads()
        stride = block // 2
        while stride > 0:  # a tree: half the threads merge their partner each step
            if tid < stride:
                m2, s2 = merge(
                    shared_m[tid], shared_s[tid], shared_m[tid + stride], shared_s[tid + stride]
                )
                shared_m[tid] = m2
                shared_s[tid] = s2
            cuda.syncthreads()
            stride //= 2
        return shared_m[0], shared_s[0]

    return reduce


def _ftype(dtype: str):
    return numba.float32 if dtype == "float32" else numba.float64


@cache
def cuda_forward_kernel(
    dtype: str = "float32",
    block: int = DEFAULT_BLOCK,
    ilp: int = ILP,
    shuffles: bool = USE_SHUFFLES,
):
    """Kernel ``(logits (M, V), targets (M,), ignore_index, loss (M,), lse (M,))``, grid M."""
    if block % WARP or block & (block - 1):
        raise ValueError(f"block must be a power of two >= {WARP}, got {block}")
    ftype = _ftype(dtype)
    lowest = ftype(np.finfo(dtype).min)  # a finite start: merging two empty states stays 0
    reduce = _block_reduce(dtype, block, shuffles)
    stride = block * ilp

    @cuda_kernel(block)
    def cross_entropy_forward(logits, targets, ignore_index, loss, lse):
        row = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        V = logits.shape[1]
        m = lowest
        s = ftype(0)
        xs = cuda.local.array(ilp, ftype)  # unrolled by the compiler into registers
        for start in range(tid, V, stride):
            # Issue the ILP loads first, then fold them in: the loads overlap in flight.
            for k in range(ilp):
                j = start + k * block
                if j < V:
                    xs[k] = logits[row, j]
            for k in range(ilp):
                if start + k * block < V:
                    x = xs[k]
                    if x > m:  # a new maximum: rescale the sum so far
                        s = s * math.exp(m - x) + ftype(1)
                        m = x
                    else:
                        s += math.exp(x - m)
        m, s = reduce(m, s)
        if tid == 0:
            log_z = m + math.log(s)
            lse[row] = log_z
            t = targets[row]
            if t == ignore_index:
                loss[row] = ftype(0)
            elif t >= 0 and t < V:
                loss[row] = log_z - logits[row, t]
            else:  # a bad target: a NaN loss says so without a device sync
                loss[row] = ftype(math.nan)

    return cross_entropy_forward


@cache
def cuda_backward_kernel(dtype: str = "float32", block: int = DEFAULT_BLOCK, reverse: bool = True):
    """Kernel ``(logits, targets, ignore_index, lse, scale (1,), grad)``, grid M.

    ``grad`` may be ``logits``: each element is read, then written, by the same thread.
    """
    ftype = _ftype(dtype)

    @cuda_kernel(block)
    def cross_entropy_backward(logits, targets, ignore_index, lse, scale, grad):
        M, V = logits.shape
        row = M - 1 - cuda.blockIdx.x if reverse else cuda.blockIdx.x
        t = targets[row]
        k = scale[0]
        if t == ignore_index:
            k = ftype(0)
        c = lse[row]
        for j in range(cuda.threadIdx.x, V, block):
            g = math.exp(logits[row, j] - c) * k
            if j == t:
                g -= k
            grad[row, j] = g

    return cross_entropy_backward
