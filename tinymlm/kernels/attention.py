r"""Fused multi-head attention on the GPU, forward and backward, in Numba CUDA.

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

The raw-array API (:func:`attention_forward`, :func:`attention_backward`) takes CuPy arrays
(or NumPy arrays under Numba's CUDA simulator, which the tests use); :class:`FusedAttention`
wraps it in the autograd ``Function`` contract.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from functools import cache

import numpy as np
from numba import config as numba_config
from numba import cuda, float32

from tinymlm.autograd import Function, Tensor
from tinymlm.kernels.launch import array_module, cuda_kernel, launch

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


# Filled with NaN before a launch so an element no thread writes shows up in a comparison.
# On by default under the simulator (the tests); the GPU check turns it on while validating.
POISON = bool(numba_config.ENABLE_CUDASIM)


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


# ----------------------------------------------------------------------------------------------
# Raw-array API
# ----------------------------------------------------------------------------------------------


def supports(q) -> bool:
    """True when the kernels handle arrays shaped like ``q``: float32 (B, H, S, d), d <= 64."""
    return q.ndim == 4 and q.dtype == np.float32 and 1 <= q.shape[3] <= MAX_HEAD_DIM


def _array_module(a):
    return array_module(
        a,
        "the fused attention kernels run on CuPy arrays; move the tensors to the GPU "
        "(tensor.to('cuda')) or use the reference path (kernels='reference')",
    )


def _check(q, k, v) -> None:
    if not (q.shape == k.shape == v.shape) or q.ndim != 4:
        raise ValueError(
            f"q, k, v must all be (B, heads, S, d); got {q.shape}, {k.shape}, {v.shape}"
        )
    if not supports(q) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"the fused attention kernels need float32 with head dim <= {MAX_HEAD_DIM}; got "
            f"{q.dtype}/{k.dtype}/{v.dtype} with d = {q.shape[3]}: use the reference path"
        )


def _empty(xp, shape):
    return xp.full(shape, np.nan, dtype=np.float32) if POISON else xp.empty(shape, np.float32)


def _lengths(xp, lengths, batch: int, seq: int):
    """(B,) int32 on the arrays' device, clipped to [0, S] (no device sync)."""
    if lengths is not None and lengths is _last_mask[1]:
        # Made by _lengths_from_mask: int32 in [1, S] already, and the same array for every
        # layer's forward and backward; preparing it again would cost two launches per call.
        return lengths
    lengths = xp.asarray(lengths)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must be (B,) = ({batch},), got shape {lengths.shape}")
    return xp.clip(lengths, 0, seq).astype(np.int32)


def attention_forward(q, k, v, lengths, scale: float, block_q=None, block_k=None,
                      causal=False):
    """Returns ``(out, lse)``: out (B, H, S, d) float32 and the natural log-sum-exp (B, H, S).

    ``lengths[b]`` is the number of real (leading) tokens of sequence b; the rest is padding.
    ``causal``: query i sees keys j <= i only.
    """
    xp = _array_module(q)
    _check(q, k, v)
    batch, heads, seq, dim = q.shape
    sizes = tiles(dim)
    bq, bk = block_q or sizes["block_q"], block_k or sizes["block_k"]
    lengths = _lengths(xp, lengths, batch, seq)
    out = _empty(xp, q.shape)  # (B, H, S, d)
    lse = _empty(xp, q.shape[:3])  # (B, H, S)
    scale_log2 = np.float32(scale * math.log2(math.e))
    grid = ((seq + bq - 1) // bq, batch * heads)
    launch(forward_kernel(dim, bq, bk, causal), grid, bq, q, k, v, lengths, scale_log2, out, lse)
    return out, lse


def attention_backward(
    q, k, v, out, lse, grad_out, lengths, scale: float, block_q=None, block_k=None, causal=False
):
    """Returns ``(dq, dk, dv)``, each (B, H, S, d), from the forward's ``out`` and ``lse``."""
    xp = _array_module(q)
    _check(q, k, v)
    batch, heads, seq, dim = q.shape
    sizes = tiles(dim)
    bq, bk = block_q or sizes["block_q"], block_k or sizes["block_k"]
    lengths = _lengths(xp, lengths, batch, seq)
    scale_log2 = np.float32(scale * math.log2(math.e))
    scale = np.float32(scale)
    grad_out = xp.asarray(grad_out, dtype=np.float32)

    delta = _empty(xp, q.shape[:3])  # (B, H, S)
    query_grid = ((seq + bq - 1) // bq, batch * heads)
    launch(delta_kernel(dim, bq), query_grid, bq, out, grad_out, delta)

    dq, dk, dv = _empty(xp, q.shape), _empty(xp, q.shape), _empty(xp, q.shape)
    # The dK/dV kernel mirrors the dQ kernel: block_q threads each own one key, and queries
    # are staged block_k at a time (the same shared-memory budget).
    key_grid = ((seq + bq - 1) // bq, batch * heads)
    kernel = dkdv_kernel(dim, bq, bk, causal)
    args = (q, k, v, grad_out, lse, delta, lengths, scale_log2, scale)
    launch(kernel, key_grid, bq, *args, dk, dv)
    launch(dq_kernel(dim, bq, bk, causal), query_grid, bq, *args, dq)
    return dq, dk, dv


class FusedAttention(Function):
    """softmax(q k^T * scale, padded keys removed) v as one autograd Function.

    ``FusedAttention.apply(q, k, v, lengths=lengths, scale=1 / sqrt(d))`` with q, k, v
    (B, H, S, d) float32 CuPy arrays or Tensors and ``lengths`` (B,) the count of real (leading)
    tokens per sequence. Saves q, k, v, the output and the log-sum-exp: O(S) per row, not S x S.
    ``causal=True``: query i sees keys j <= i only (a decoder).
    """

    def forward(self, q, k, v, *, lengths, scale, causal=False):
        out, lse = attention_forward(q, k, v, lengths, scale, causal=causal)
        self.save_for_backward(q, k, v, out, lse)
        self.lengths, self.scale, self.causal = lengths, scale, causal
        return out

    def backward(self, grad):
        q, k, v, out, lse = self.saved_tensors
        return attention_backward(q, k, v, out, lse, grad, self.lengths, self.scale,
                                  causal=self.causal)


# The attention mask of a batch is the same array for every layer: remember the last one so
# its lengths are computed (and the device synchronised) once per batch, not once per layer.
_last_mask: list = [None, None]  # [mask, lengths or None when the kernels cannot take it]


def _lengths_from_mask(mask, seq: int):
    """(B,) int32 lengths when ``mask`` (B, S) is right padding with a real token in every
    sequence; otherwise None (the reference path then runs, with Hugging Face's semantics)."""
    if _last_mask[0] is mask:
        return _last_mask[1]
    xp = _array_module(mask)
    real = mask != 0  # (B, S)
    lengths = real.sum(axis=1).astype(np.int32)  # (B,)
    right_padded = (real == (xp.arange(seq)[None, :] < lengths[:, None])).all()
    # A sequence with no real token: the kernels give zeros, Hugging Face a uniform average
    # over the padding. Such rows reach no loss, but both paths must agree, so fall back.
    usable = bool(right_padded & (lengths.min() > 0))  # the one device sync
    _last_mask[:] = [mask, lengths if usable else None]
    return _last_mask[1]


# Why the kernels declined a call since the last clear(): the GPU check reports it per step.
declined: Counter = Counter()


def fused_attention_or_none(q, k, v, attention_mask, scale: float, only_if_faster=False,
                            is_causal=False):
    """``FusedAttention`` for ``F.scaled_dot_product_attention``, or None when the kernels
    cannot run these inputs (dtype, head dim, left or inner padding, an all-padding sequence)
    and the caller should use the reference path. With ``only_if_faster`` (kernels="auto")
    also None where the reference path measured faster for this shape. Each None is counted
    in :data:`declined` by its reason. ``is_causal``: the decoder's mask as well (the timing
    measured without it decides for it too)."""
    raw_q, raw_k, raw_v = (a.data if isinstance(a, Tensor) else a for a in (q, k, v))
    if not (supports(raw_q) and raw_q.shape == raw_k.shape == raw_v.shape):
        declined["dtype or shape"] += 1
        return None
    if raw_k.dtype != raw_q.dtype or raw_v.dtype != raw_q.dtype:
        declined["dtype or shape"] += 1
        return None
    batch, _, seq, _ = raw_q.shape
    if attention_mask is None:
        xp = _array_module(raw_q)
        lengths = xp.full((batch,), seq, dtype=np.int32)
    else:
        if attention_mask.shape != (batch, seq):
            declined["mask shape"] += 1
            return None
        lengths = _lengths_from_mask(attention_mask, seq)
        if lengths is None:
            declined["not right padding, or a sequence with no real token"] += 1
            return None
    if only_if_faster and not fused_attention_is_faster(raw_q):
        declined["measured slower for this shape"] += 1
        return None
    return FusedAttention.apply(q, k, v, lengths=lengths, scale=scale, causal=is_causal)


# --- kernels="auto" on the GPU: the faster path for each shape, by measurement ---------------

# (B, heads, S, d, dtype) -> {"fused_ms", "reference_ms", "fused"}: what was measured and chosen
measured_choices: dict[tuple, dict] = {}


def choose_by_timing(run_fused, run_reference, clock=time.perf_counter, repeats: int = 3) -> dict:
    """Time two callables that each run forward + backward and wait for the device: one
    warm-up each (compilation, memory pools), then ``repeats`` alternating runs. The smaller
    median wins; a tie goes to the fused kernel (it also saves the S x S memory)."""
    run_fused()
    run_reference()
    times: dict[str, list[float]] = {"fused": [], "reference": []}
    for _ in range(repeats):
        for name, run in (("fused", run_fused), ("reference", run_reference)):
            start = clock()
            run()
            times[name].append(clock() - start)
    fused_ms = 1e3 * statistics.median(times["fused"])
    reference_ms = 1e3 * statistics.median(times["reference"])
    return {"fused_ms": fused_ms, "reference_ms": reference_ms, "fused": fused_ms <= reference_ms}


def attention_runs(like):
    """Forward + backward of each path on random inputs shaped like ``like`` (B, heads, S, d),
    on its device, no padding: the two callables :func:`choose_by_timing` compares."""
    from tinymlm.nn.functional import Attention

    xp = _array_module(like)
    batch, _, seq, head_dim = like.shape
    generator = xp.random.default_rng(0)
    q, k, v, grad = (generator.standard_normal(like.shape, dtype=np.float32) for _ in range(4))
    lengths = xp.full((batch,), seq, dtype=np.int32)  # (B,)
    mask = xp.ones((batch, seq), dtype=np.int64)  # (B, S)
    scale = 1.0 / math.sqrt(head_dim)

    def wait():  # both paths run on CuPy's current stream; the simulator is synchronous
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()

    def fused():
        out, lse = attention_forward(q, k, v, lengths, scale)
        attention_backward(q, k, v, out, lse, grad, lengths, scale)
        wait()

    def reference():
        function = Attention()
        function.forward(q, k, v, mask, scale=scale)
        function.backward(grad)
        wait()

    return fused, reference


def fused_attention_is_faster(q) -> bool:
    """Whether the fused kernel beats the reference path for attention of q's shape
    (B, heads, S, d) and dtype, forward + backward: measured the first time a shape is seen
    (a few milliseconds of the first step), then remembered in ``measured_choices``."""
    key = (*q.shape, str(q.dtype))
    if key not in measured_choices:
        measured_choices[key] = choose_by_timing(*attention_runs(q))
    return measured_choices[key]["fused"]
