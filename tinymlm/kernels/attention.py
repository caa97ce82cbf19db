"""Fused multi-head attention on the GPU: the raw-array API, the autograd Function, and the
choice between it and the reference path.

The kernels and their mathematics (FlashAttention-2: online softmax forward, D = rowsum(dO o),
then dK/dV per key block and dQ per query block, no atomics) are in
``tinymlm.kernels.attention_kernels``. The raw-array API (:func:`attention_forward`,
:func:`attention_backward`) takes CuPy arrays (or NumPy arrays under Numba's CUDA simulator,
which the tests use); :class:`FusedAttention` wraps it in the autograd ``Function`` contract;
:func:`fused_attention_or_none` is what ``F.scaled_dot_product_attention`` calls on the GPU.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter

import numpy as np
from numba import config as numba_config

from tinymlm.autograd import Function, Tensor
from tinymlm.kernels.attention_kernels import (  # noqa: F401  (the lab and tests use them here)
    MAX_HEAD_DIM,
    MAX_START,
    delta_kernel,
    dkdv_kernel,
    dq_kernel,
    forward_kernel,
    tiles,
)
from tinymlm.kernels.launch import array_module, launch

# Filled with NaN before a launch so an element no thread writes shows up in a comparison.
# On by default under the simulator (the tests); the GPU check turns it on while validating.
POISON = bool(numba_config.ENABLE_CUDASIM)

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
