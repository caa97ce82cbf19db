"""The CUDA attention kernels' causal mask under Numba's CUDA simulator; prints results as JSON.

Run in its own process by ``tests/test_causal_attention.py`` (the simulator must be switched on
before Numba is imported): ``NUMBA_ENABLE_CUDASIM=1 python tests/sim_causal_attention.py``.
Each case compares the kernels' output, log-sum-exp and three gradients with a float64 NumPy
reference (right padding times the lower triangle), with tiles small enough that a sequence
spans several query and key blocks, so the skipped tiles and the partial ones are both run.
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
    """float64 causal attention with right padding: (out, lse, dq, dk, dv)."""
    q, k, v, grad_out = (a.astype(np.float64) for a in (q, k, v, grad_out))
    seq = q.shape[2]
    real_key = np.arange(seq)[None, :] < np.asarray(lengths)[:, None]  # (B, S)
    visible = real_key[:, None, :] & np.tri(seq, dtype=bool)[None]  # (B, S, S) key j <= i
    scores = np.where(visible[:, None], scale * q @ k.swapaxes(-1, -2), -np.inf)  # (B,H,S,S)
    row_max = scores.max(-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)  # rows with no real key
    weights = np.exp(scores - row_max)
    total = weights.sum(-1, keepdims=True)
    probs = weights / np.where(total > 0, total, 1.0)  # (B, H, S, S)
    with np.errstate(divide="ignore"):
        lse = np.log(total[..., 0]) + row_max[..., 0]  # (B, H, S)
    dp = grad_out @ v.swapaxes(-1, -2)
    ds = probs * (dp - (probs * dp).sum(-1, keepdims=True))
    return probs @ v, lse, scale * ds @ k, scale * ds.swapaxes(-1, -2) @ q, \
        probs.swapaxes(-1, -2) @ grad_out


def errors(got, want):
    out = {}
    for key, g, w in zip(("out", "lse", "dq", "dk", "dv"), got, want, strict=True):
        finite = np.isfinite(w)
        out[key] = {"max_abs_err": float(np.abs(g[finite] - w[finite]).max()),
                    "max_abs_ref": float(np.abs(w[finite]).max()),
                    "nan": int(np.isnan(g).sum()),
                    "nonfinite_match": bool(np.array_equal(g[~finite], w[~finite]))}
    return out


def raw_case(seed, batch, heads, seq, dim, lengths, block_q, block_k):
    rng = np.random.default_rng(seed)
    q, k, v, grad_out = (rng.standard_normal((batch, heads, seq, dim)).astype(np.float32)
                         for _ in range(4))
    lengths = np.asarray(lengths)
    scale = 1.0 / np.sqrt(dim)
    tile = {"block_q": block_q, "block_k": block_k, "causal": True}
    out, lse = attention.attention_forward(q, k, v, lengths, scale, **tile)
    grads = attention.attention_backward(q, k, v, out, lse, grad_out, lengths, scale, **tile)
    result = errors((out, lse, *grads), reference(q, k, v, grad_out, lengths, scale))
    # no output changes when later tokens change (bit for bit)
    t = seq // 2
    q2, k2, v2 = (a.copy() for a in (q, k, v))
    for a in (q2, k2, v2):
        a[:, :, t + 1:] = rng.standard_normal(a[:, :, t + 1:].shape).astype(np.float32) * 3
    out2, _ = attention.attention_forward(q2, k2, v2, lengths, scale, **tile)
    result["earlier_rows_unchanged"] = bool(np.array_equal(out2[:, :, :t + 1], out[:, :, :t + 1]))
    return result


def dispatch_case():
    """fused_attention_or_none(..., is_causal=True) under autograd against the reference
    Function with is_causal (Hugging Face's semantics), on a right-padded batch."""
    from tinymlm.nn.functional import Attention

    rng = np.random.default_rng(11)
    q, k, v, grad_out = (rng.standard_normal((2, 2, 11, 16)).astype(np.float32)
                         for _ in range(4))
    mask = (np.arange(11)[None, :] < np.array([11, 6])[:, None]).astype(np.int64)  # (B, S)
    scale = 1.0 / np.sqrt(16)

    def run(apply):
        tensors = [Tensor(a.copy(), requires_grad=True) for a in (q, k, v)]
        out = apply(*tensors)
        out.backward(grad_out)
        return type(out._ctx).__name__, [out.data] + [t.grad for t in tensors]

    ran, fused = run(lambda a, b, c: attention.fused_attention_or_none(
        a, b, c, mask, scale, is_causal=True))
    _, ref = run(lambda a, b, c: Attention.apply(a, b, c, mask, scale=scale, is_causal=True))
    _, full = run(lambda a, b, c: Attention.apply(a, b, c, mask, scale=scale))
    return {"ran": ran,
            "max_abs_err": {key: float(np.abs(f - r).max())
                            for key, f, r in zip(("out", "dq", "dk", "dv"), fused, ref,
                                                 strict=True)},
            "differs_from_non_causal": float(np.abs(fused[0] - full[0]).max())}


def main():
    results = {
        # several query blocks and key tiles; a ragged and a full sequence
        "tiled": raw_case(0, 2, 2, 19, 16, [19, 12], block_q=8, block_k=4),
        # a key tile wider than a query block, a length that ends inside a tile, n = 0
        "wide_keys": raw_case(1, 3, 1, 13, 8, [13, 5, 0], block_q=4, block_k=8),
        # the production tiles on a short sequence
        "production": raw_case(2, 1, 2, 9, 32, [9], block_q=None, block_k=None),
        "dispatch": dispatch_case(),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
