"""Runs the fused attention kernels under Numba's CUDA simulator; prints errors as JSON.

The simulator must be switched on before Numba is imported, so ``tests/test_kernel_attention.py``
runs this file in its own process: ``NUMBA_ENABLE_CUDASIM=1 python tests/sim_attention.py``.
Each case compares the kernels' forward output, log-sum-exp and the three gradients with a
float64 NumPy reference written here, and counts NaNs (outputs are NaN-poisoned before launch,
so an element no thread writes shows up).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    sys.exit("run with NUMBA_ENABLE_CUDASIM=1 (the tests do this for you)")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tinymlm.autograd import Tensor  # noqa: E402
from tinymlm.kernels import attention  # noqa: E402


def reference(q, k, v, grad_out, lengths, scale):
    """float64 attention with right padding: (out, lse, dq, dk, dv)."""
    q, k, v, grad_out = (a.astype(np.float64) for a in (q, k, v, grad_out))
    seq = q.shape[2]
    real_key = np.arange(seq)[None, :] < np.asarray(lengths)[:, None]  # (B, S)
    scores = scale * q @ k.swapaxes(-1, -2)  # (B, H, S, S)
    scores = np.where(real_key[:, None, None, :], scores, -np.inf)
    row_max = scores.max(-1, keepdims=True)  # (B, H, S, 1)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)  # all-padding rows
    weights = np.exp(scores - row_max)
    total = weights.sum(-1, keepdims=True)
    probs = weights / np.where(total > 0, total, 1.0)  # (B, H, S, S); all-padding rows: 0
    out = probs @ v  # (B, H, S, d)
    with np.errstate(divide="ignore"):
        lse = np.log(total[..., 0]) + row_max[..., 0]  # (B, H, S); -inf for empty rows
    dv = probs.swapaxes(-1, -2) @ grad_out
    dp = grad_out @ v.swapaxes(-1, -2)  # (B, H, S, S)
    ds = probs * (dp - (probs * dp).sum(-1, keepdims=True))
    dq = scale * ds @ k
    dk = scale * ds.swapaxes(-1, -2) @ q
    return out, lse, dq, dk, dv


def randn(rng, batch, heads, seq, dim):
    """(B, H, S, d) float32. Contiguous: the simulator cannot copy strided arrays to its fake
    device (on a GPU the kernels take CuPy's strided views as they are)."""
    return rng.standard_normal((batch, heads, seq, dim)).astype(np.float32)


def run_case(name, seed, batch, heads, seq, dim, lengths, block_q, block_k, outliers):
    rng = np.random.default_rng(seed)
    q, k, v = (randn(rng, batch, heads, seq, dim) for _ in range(3))
    if outliers:  # a few large logits per row, so the softmax is peaked, not near uniform
        k[:, :, 1::5, :] *= np.float32(4.0)
    grad_out = rng.standard_normal((batch, heads, seq, dim)).astype(np.float32)
    lengths = np.asarray(lengths, dtype=np.int64)
    scale = 1.0 / np.sqrt(dim)
    tile = {"block_q": block_q, "block_k": block_k}

    out, lse = attention.attention_forward(q, k, v, lengths, scale, **tile)
    grads = attention.attention_backward(q, k, v, out, lse, grad_out, lengths, scale, **tile)
    expected = reference(q, k, v, grad_out, lengths, scale)

    result = {}
    for key, got, want in zip(
        ("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), expected, strict=True
    ):
        finite = np.isfinite(want)
        result[key] = {
            "max_abs_err": float(np.abs(got[finite] - want[finite]).max()),
            "max_abs_ref": float(np.abs(want[finite]).max()),
            "nan": int(np.isnan(got).sum()),
            "nonfinite_match": bool(np.array_equal(got[~finite], want[~finite])),
        }
    padded = np.arange(seq)[None, :] >= lengths[:, None]  # (B, S)
    padded = np.broadcast_to(padded[:, None, :], (batch, heads, seq))
    result["padded_key_grads_zero"] = bool(
        (grads[1][padded] == 0).all() and (grads[2][padded] == 0).all()
    )
    empty = lengths == 0
    result["empty_out_zero"] = bool((out[empty] == 0).all())
    result["dtype"] = [str(a.dtype) for a in (out, lse, *grads)]
    return name, result


def run_autograd_case():
    """FusedAttention.apply under autograd gives the raw API's gradients."""
    rng = np.random.default_rng(7)
    q, k, v = (randn(rng, 1, 2, 11, 32) for _ in range(3))
    grad_out = rng.standard_normal(q.shape).astype(np.float32)
    lengths = np.array([9])
    scale = 1.0 / np.sqrt(32)
    tq, tk, tv = (Tensor(a, requires_grad=True) for a in (q, k, v))
    out = attention.FusedAttention.apply(tq, tk, tv, lengths=lengths, scale=scale)
    out.backward(grad_out)
    expected = reference(q, k, v, grad_out, lengths, scale)
    got = (out.data, None, tq.grad, tk.grad, tv.grad)
    errors = {
        key: float(np.abs(g - w).max())
        for key, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, expected, strict=True)
        if g is not None
    }
    return "autograd", {"max_abs_err": errors, "shape": list(out.shape)}


def run_dispatch_case():
    """``fused_attention_or_none`` gives the reference path's result (Hugging Face semantics)
    for right padding, and declines inner padding and an all-padding sequence."""
    try:
        from tinymlm.nn.functional import Attention
    except ImportError as exc:  # the reference path is another engineer's file
        return "dispatch", {"skipped": f"tinymlm.nn.functional.Attention unavailable: {exc}"}
    rng = np.random.default_rng(11)
    q, k, v = (randn(rng, 2, 2, 11, 32) for _ in range(3))
    grad_out = rng.standard_normal(q.shape).astype(np.float32)
    scale = 1.0 / np.sqrt(32)
    mask = (np.arange(11)[None, :] < np.array([11, 6])[:, None]).astype(np.int64)  # (B, S)

    def grads_of(apply):
        tensors = [Tensor(a.copy(), requires_grad=True) for a in (q, k, v)]
        out = apply(*tensors)
        out.backward(grad_out)
        return [out.data] + [t.grad for t in tensors]

    fused = grads_of(lambda a, b, c: attention.fused_attention_or_none(a, b, c, mask, scale))
    ref = grads_of(lambda a, b, c: Attention.apply(a, b, c, mask, scale=scale))
    inner = mask.copy()
    inner[0, 3] = 0
    empty = mask.copy()
    empty[1] = 0
    return "dispatch", {
        "max_abs_err": {
            key: float(np.abs(f - r).max())
            for key, f, r in zip(("out", "dq", "dk", "dv"), fused, ref, strict=True)
        },
        "declines_inner_padding": attention.fused_attention_or_none(q, k, v, inner, scale) is None,
        "declines_all_padding": attention.fused_attention_or_none(q, k, v, empty, scale) is None,
        "no_mask_runs": attention.fused_attention_or_none(q, k, v, None, scale) is not None,
    }


def run_choice_case():
    """kernels="auto": the timing runs of both paths execute, and the choice is remembered
    per shape (under the simulator the times mean nothing; the mechanism is what is tested)."""
    attention.measured_choices.clear()
    q = randn(np.random.default_rng(5), 1, 2, 9, 32)
    mask = np.ones((1, 9), dtype=np.int64)
    out = attention.fused_attention_or_none(q, q, q, mask, 0.2, only_if_faster=True)
    choice = attention.measured_choices[(1, 2, 9, 32, "float32")]
    again = attention.fused_attention_or_none(q, q, q, mask, 0.2, only_if_faster=True)
    return "choice", {
        "keys": sorted(choice),
        "times_positive": choice["fused_ms"] > 0 and choice["reference_ms"] > 0,
        "follows_choice": (out is not None) == choice["fused"] == (again is not None),
        "measured_once": len(attention.measured_choices) == 1,
    }


def main() -> None:
    cases = [
        # d = 32: three query blocks and three key tiles, S not a multiple of the tile, one
        # full sequence, one ragged, one with no real token at all.
        ("d32_tiles8", 0, 3, 2, 19, 32, [19, 7, 0], 8, 8, True),
        # d = 64 with uneven query and key tiles; a length that ends exactly on a tile.
        ("d64_tiles8x4", 1, 2, 1, 13, 64, [13, 8], 8, 4, True),
        # The production tiles (64 x 16 at d = 64): one partial block of each kind.
        ("d64_production_tiles", 2, 1, 1, 21, 64, [18], None, None, False),
    ]
    results = dict(run_case(*case) for case in cases)
    for case in (run_autograd_case, run_dispatch_case, run_choice_case):
        name, result = case()
        results[name] = result
    print(json.dumps(results))


if __name__ == "__main__":
    main()
