r"""The CUDA kernels of fused attention (FlashAttention-2 style), built per head size and tile.

For one (sequence b, head h) with n = ``lengths[b]`` real keys (right padding) and scale
:math:`\tau = 1/\sqrt{d}`:

.. math::

    s_{ij} = \tau\, q_i \cdot k_j, \qquad
    L_i = \log \sum_{j<n} e^{s_{ij}}, \qquad
    P_{ij} = e^{s_{ij} - L_i}, \qquad
    o_i = \sum_{j<n} P_{ij}\, v_j .

Padded keys (j >= n) get weight exactly 0 because they are never read. Every query row,
padded or not, is computed. A sequence with n = 0 gives o = 0 and L = -inf (an empty sum).
With ``causal`` (a decoder) the sums run over j <= i as well, and the keys after a block's last
row, or the queries before a key block's first key, are skipped tile by tile.

Forward (FlashAttention-2). A block owns ``BLOCK_Q`` query rows, one thread per row, and walks
the keys in tiles of ``BLOCK_K`` staged in shared memory. Each thread keeps its running maximum
m, running sum l and unnormalised output in registers (the *online softmax*): when a tile
raises the maximum from m to m', the old sum and output are rescaled by e^{m - m'}. Nothing of
size S x S is ever stored; only L (one float per row) is saved for the backward pass. The
scale is folded into base 2: q is multiplied once by tau * log2(e), so every exponential is a
single ``exp2`` instruction.

Backward. With dP = dO V^T and the softmax Jacobian,

.. math::

    dV = P^\top dO, \qquad
    dS_{ij} = P_{ij}\,(dP_{ij} - D_i), \quad D_i = \textstyle\sum_j P_{ij} dP_{ij}
            = dO_i \cdot o_i, \qquad
    dQ = \tau\, dS\, K, \qquad dK = \tau\, dS^\top Q .

D is computed first (one kernel). Then one kernel per *key* block recomputes P tile by tile
from Q, K and L and accumulates dK and dV for its keys, and one kernel per *query* block
recomputes P and accumulates dQ. Each output element is written by exactly one thread, so
there are no atomics and the result is deterministic.

``tinymlm.kernels.attention`` launches them (the raw-array API and the autograd Function).
"""

from __future__ import annotations

import math
from functools import cache

from numba import cuda, float32

from tinymlm.kernels.launch import cuda_kernel

LOG2E = float32(math.log2(math.e))
LN2 = float32(math.log(2.0))
NEG_INF = float32(-math.inf)  # stored as the log-sum-exp of a row with no real key
# The running maximum starts here rather than at -inf: fastmath lets the compiler assume no
# arithmetic sees an infinity, and exp2(MAX_START - s) is 0 all the same.
MAX_START = float32(-1.0e30)
MAX_HEAD_DIM = 64  # past this the per-thread accumulators no longer fit in registers


def tiles(head_dim: int) -> dict[str, int]:
    """The production tile sizes (threads per block = the block's row count).

    64 rows per block keeps two warps busy per block and, for d = 64, keeps the dQ and dK/dV
    kernels (two padded own-row tables plus two key/query tiles) under 48 KB of shared memory.
    """
    return {"block_q": 64, "block_k": 32 if head_dim <= 32 else 16}



# ----------------------------------------------------------------------------------------------
# Kernels. Each factory closes over its compile-time constants (head dim, tile sizes): Numba
# needs constant shapes for shared and local arrays, and constant trip counts let the inner
# loops over d unroll so the per-thread arrays live in registers.
# ----------------------------------------------------------------------------------------------


@cache
def forward_kernel(head_dim: int, block_q: int, block_k: int, causal: bool = False):
    """out, lse <- attention(q, k, v); grid (ceil(S / block_q), B * heads), block_q threads."""
    D, BQ, BK, CAUSAL = head_dim, block_q, block_k, causal
    BKP = BK + 1  # padded score row: conflict-free

    @cuda_kernel(BQ)
    def attention_forward_kernel(q, k, v, lengths, scale_log2, out, lse):
        # q, k, v, out: (B, H, S, D) float32, any strides; lengths: (B,) int32; lse: (B, H, S)
        t = cuda.threadIdx.x
        heads = q.shape[1]
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y - b * heads
        seq = q.shape[2]
        n = lengths[b]
        row = cuda.blockIdx.x * BQ + t
        live = row < seq

        k_tile = cuda.shared.array((BK, D), float32)
        v_tile = cuda.shared.array((BK, D), float32)
        # This thread's scores for the current tile. In shared memory, rows padded to BK + 1
        # (conflict-free): a local array indexed by a loop variable would go to local memory.
        scores = cuda.shared.array((BQ, BKP), float32)
        q_row = cuda.local.array(D, float32)  # this thread's query, pre-scaled to base 2
        acc = cuda.local.array(D, float32)  # unnormalised output row

        for c in range(D):
            q_row[c] = q[b, h, row, c] * scale_log2 if live else float32(0.0)
            acc[c] = float32(0.0)
        m = MAX_START  # running maximum of the base-2 scores
        l = float32(0.0)  # running sum of exp2(score - m)
        # causal: no row of this block sees a key past its last row (a bound uniform over the
        # block, so every thread reaches the same syncthreads)
        key_end = min(n, cuda.blockIdx.x * BQ + BQ) if CAUSAL else n

        for k0 in range(0, key_end, BK):
            # Stage the tile: consecutive threads read consecutive floats (coalesced).
            for idx in range(t, BK * D, BQ):
                j = idx // D
                c = idx - j * D
                if k0 + j < n:  # padded keys are never read
                    k_tile[j, c] = k[b, h, k0 + j, c]
                    v_tile[j, c] = v[b, h, k0 + j, c]
            cuda.syncthreads()
            in_tile = min(BK, n - k0)
            if CAUSAL:  # and this row stops at its own position (key 0 is always in)
                in_tile = min(in_tile, row + 1 - k0)
            if live:
                tile_max = m
                for j in range(BK):
                    if j < in_tile:
                        s = float32(0.0)
                        for c in range(D):
                            s += q_row[c] * k_tile[j, c]
                        scores[t, j] = s
                        tile_max = max(tile_max, s)
                rescale = math.exp2(m - tile_max)  # 0 on the first tile
                l *= rescale
                for c in range(D):
                    acc[c] *= rescale
                for j in range(BK):
                    if j < in_tile:
                        p = math.exp2(scores[t, j] - tile_max)
                        l += p
                        for c in range(D):
                            acc[c] += p * v_tile[j, c]
                m = tile_max
            cuda.syncthreads()  # the next tile overwrites shared memory

        if live:
            if l > float32(0.0):
                inv_l = float32(1.0) / l
                for c in range(D):
                    out[b, h, row, c] = acc[c] * inv_l
                lse[b, h, row] = (m + math.log2(l)) * LN2
            else:  # no real key: an empty sum
                for c in range(D):
                    out[b, h, row, c] = float32(0.0)
                lse[b, h, row] = NEG_INF

    return attention_forward_kernel


@cache
def delta_kernel(head_dim: int, block_q: int):
    """delta <- rowsum(dO * O); grid (ceil(S / block_q), B * heads), block_q threads."""
    D, BQ = head_dim, block_q

    @cuda_kernel(BQ)
    def attention_delta_kernel(out, grad_out, delta):
        # out, grad_out: (B, H, S, D); delta: (B, H, S)
        heads = out.shape[1]
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y - b * heads
        row = cuda.blockIdx.x * BQ + cuda.threadIdx.x
        if row < out.shape[2]:
            total = float32(0.0)
            for c in range(D):
                total += out[b, h, row, c] * grad_out[b, h, row, c]
            delta[b, h, row] = total

    return attention_delta_kernel


@cache
def dkdv_kernel(head_dim: int, block_keys: int, query_tile: int, causal: bool = False):
    """dK, dV for one key block; grid (ceil(S / block_keys), B * heads), block_keys threads.

    One thread per key j; it loops over *all* query rows (padded query rows attend to real keys
    too) in tiles of ``query_tile`` staged in shared memory, and keeps dk_j, dv_j in registers.
    Its own k_j and v_j sit in shared memory with rows padded to D + 1 floats, so the 32
    threads of a warp reading column c of 32 different rows hit 32 different banks.
    """
    D, BK, BQ, CAUSAL = head_dim, block_keys, query_tile, causal
    DP = D + 1  # padded row length: conflict-free column reads

    @cuda_kernel(BK)
    def attention_dkdv_kernel(q, k, v, grad_out, lse, delta, lengths, scale_log2, scale, dk, dv):
        t = cuda.threadIdx.x
        heads = q.shape[1]
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y - b * heads
        seq = q.shape[2]
        n = lengths[b]
        key = cuda.blockIdx.x * BK + t
        real = key < n  # a real key: gradients to accumulate
        inside = key < seq

        k_own = cuda.shared.array((BK, DP), float32)
        v_own = cuda.shared.array((BK, DP), float32)
        q_tile = cuda.shared.array((BQ, D), float32)
        do_tile = cuda.shared.array((BQ, D), float32)
        lse_tile = cuda.shared.array(BQ, float32)  # in base 2
        delta_tile = cuda.shared.array(BQ, float32)
        dk_acc = cuda.local.array(D, float32)
        dv_acc = cuda.local.array(D, float32)

        for c in range(D):
            k_own[t, c] = k[b, h, key, c] * scale_log2 if real else float32(0.0)
            v_own[t, c] = v[b, h, key, c] if real else float32(0.0)
            dk_acc[c] = float32(0.0)
            dv_acc[c] = float32(0.0)

        # causal: no query before this block's first key sees any of its keys (block-uniform)
        query_start = cuda.blockIdx.x * BK if CAUSAL else 0
        if cuda.blockIdx.x * BK < n:  # the whole block is uniform here: syncthreads is safe
            for q0 in range(query_start, seq, BQ):
                for idx in range(t, BQ * D, BK):
                    i = idx // D
                    c = idx - i * D
                    if q0 + i < seq:
                        q_tile[i, c] = q[b, h, q0 + i, c]
                        do_tile[i, c] = grad_out[b, h, q0 + i, c]
                for i in range(t, BQ, BK):
                    if q0 + i < seq:
                        lse_tile[i] = lse[b, h, q0 + i] * LOG2E
                        delta_tile[i] = delta[b, h, q0 + i]
                cuda.syncthreads()
                in_tile = min(BQ, seq - q0)
                first = max(0, key - q0) if CAUSAL else 0  # causal: queries i >= key only
                if real:
                    for i in range(first, in_tile):
                        s = float32(0.0)  # base-2 score q_i . k_j * scale * log2(e)
                        dp = float32(0.0)  # dO_i . v_j
                        for c in range(D):
                            s += q_tile[i, c] * k_own[t, c]
                            dp += do_tile[i, c] * v_own[t, c]
                        p = math.exp2(s - lse_tile[i])
                        ds = p * (dp - delta_tile[i])
                        for c in range(D):
                            dv_acc[c] += p * do_tile[i, c]
                            dk_acc[c] += ds * q_tile[i, c]
                cuda.syncthreads()

        if inside:  # padded keys get exact zeros
            for c in range(D):
                dk[b, h, key, c] = dk_acc[c] * scale
                dv[b, h, key, c] = dv_acc[c]

    return attention_dkdv_kernel


@cache
def dq_kernel(head_dim: int, block_q: int, block_k: int, causal: bool = False):
    """dQ for one query block; grid (ceil(S / block_q), B * heads), block_q threads.

    One thread per query row i: q_i (pre-scaled) and dq_i in registers, dO_i in a padded
    shared row, keys and values staged tile by tile like the forward pass.
    """
    D, BQ, BK, CAUSAL = head_dim, block_q, block_k, causal
    DP = D + 1

    @cuda_kernel(BQ)
    def attention_dq_kernel(q, k, v, grad_out, lse, delta, lengths, scale_log2, scale, dq):
        t = cuda.threadIdx.x
        heads = q.shape[1]
        b = cuda.blockIdx.y // heads
        h = cuda.blockIdx.y - b * heads
        seq = q.shape[2]
        n = lengths[b]
        row = cuda.blockIdx.x * BQ + t
        live = row < seq

        do_own = cuda.shared.array((BQ, DP), float32)
        k_tile = cuda.shared.array((BK, D), float32)
        v_tile = cuda.shared.array((BK, D), float32)
        q_row = cuda.local.array(D, float32)
        dq_acc = cuda.local.array(D, float32)

        for c in range(D):
            q_row[c] = q[b, h, row, c] * scale_log2 if live else float32(0.0)
            do_own[t, c] = grad_out[b, h, row, c] if live else float32(0.0)
            dq_acc[c] = float32(0.0)
        row_lse = lse[b, h, row] * LOG2E if live else float32(0.0)
        row_delta = delta[b, h, row] if live else float32(0.0)
        key_end = min(n, cuda.blockIdx.x * BQ + BQ) if CAUSAL else n  # as in the forward pass

        for k0 in range(0, key_end, BK):
            for idx in range(t, BK * D, BQ):
                j = idx // D
                c = idx - j * D
                if k0 + j < n:
                    k_tile[j, c] = k[b, h, k0 + j, c]
                    v_tile[j, c] = v[b, h, k0 + j, c]
            cuda.syncthreads()
            in_tile = min(BK, n - k0)
            if CAUSAL:
                in_tile = min(in_tile, row + 1 - k0)
            if live:
                for j in range(BK):
                    if j < in_tile:
                        s = float32(0.0)
                        dp = float32(0.0)
                        for c in range(D):
                            s += q_row[c] * k_tile[j, c]
                            dp += do_own[t, c] * v_tile[j, c]
                        ds = math.exp2(s - row_lse) * (dp - row_delta)
                        for c in range(D):
                            dq_acc[c] += ds * k_tile[j, c]
            cuda.syncthreads()

        if live:
            for c in range(D):
                dq[b, h, row, c] = dq_acc[c] * scale

    return attention_dq_kernel
