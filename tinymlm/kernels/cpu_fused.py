"""Fused Numba CPU kernels for the training step: attention, layer norm, GELU, the embedding
gradient and the AdamW update.

Each kernel does in one pass over memory what the reference path in ``tinymlm.nn.functional``
(or ``tinymlm.optim``) does in several NumPy calls, each of which reads and writes a full
temporary array. The math is the reference path's, line for line (its docstrings carry the
derivations); ``tests/test_cpu_kernels.py`` holds each kernel to its reference.

Why these win on a CPU (measured with ``benchmarks/profile_cpu.py``):

- attention: NumPy's ``(B, h, S, d) @ (B, h, d, S)`` is one small BLAS call per head, and a
  threaded BLAS pays a thread hand-off per call: on a busy machine that made attention half of
  the step. Here each thread takes whole heads (``prange``) and keeps a row of scores in cache
  from the product through the softmax to the weighted sum; the (B, h, S, S) probabilities are
  written once and read once in backward.
- layer norm, GELU, AdamW: memory-bound chains of elementwise NumPy operations, each making a
  temporary; fused, each element is loaded and stored once.
- the embedding gradient: ``np.add.at`` handles repeated indices one element at a time
  through a generic path; a plain loop over rows adds whole rows.

Kernels are compiled on first use and cached on disk (``cache=True``); importing this module
imports Numba but compiles nothing. They take NumPy arrays only: the functional layer sends
CuPy arrays down the reference path (or to the CUDA kernels).
"""

from __future__ import annotations

import math
import types as pytypes

import numpy as np
from numba import njit, prange

from tinymlm.autograd import Function
from tinymlm.kernels.cpu_math import PARALLEL_MIN_ELEMENTS, kernel_exp


def _compile(fn):
    """Two cached builds of a loop: threaded over its ``prange`` and serial."""
    serial = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial")
    serial.__qualname__ = serial.__name__
    return {
        True: njit(parallel=True, fastmath=True, cache=True)(fn),
        False: njit(parallel=False, fastmath=True, cache=True)(serial),
    }


def _scalar(dtype, value):
    """A constant in the arrays' dtype, so no float64 creeps into float32 arithmetic."""
    return np.dtype(dtype).type(value)


def supported(*arrays) -> bool:
    """True when every array is a NumPy float32/float64 array of one dtype (kernels' domain)."""
    first = arrays[0]
    return all(
        isinstance(a, np.ndarray)
        and a.dtype == first.dtype
        and a.dtype.kind == "f"
        and a.dtype.itemsize in (4, 8)
        for a in arrays
    )


# --- attention ------------------------------------------------------------------------------------


def _attention_forward(q, k, v, key_penalty, causal, n_keys, lowest, keep, keep_scale, scale, p,
                       out):
    B, nh, S, d = q.shape
    dropout = keep.shape[0] > 0
    for n in prange(B * nh):
        b, h = n // nh, n % nh
        for i in range(S):
            qi = q[b, h, i]  # (d,)
            prow = p[b, h, i]  # (S,) scores, then probabilities
            row_keys = n_keys[b, i]  # keys [row_keys, S) have weight 0: never computed
            for j in range(row_keys):
                kj = k[b, h, j]
                acc = qi[0] * kj[0]
                for c in range(1, d):
                    acc += qi[c] * kj[c]
                # a causal row reads a key after i only when it sees no real key (see
                # _keys_per_row): that key is masked like a padded one, as in the reference
                prow[j] = acc * scale + (lowest if causal and j > i else key_penalty[b, j])
            m = prow[0]
            for j in range(1, row_keys):
                m = max(m, prow[j])
            total = prow[0] - prow[0]  # a zero of the arrays' dtype
            for j in range(row_keys):
                e = kernel_exp(prow[j] - m)
                prow[j] = e
                total += e
            for j in range(row_keys):
                prow[j] = prow[j] / total
            for j in range(row_keys, S):
                prow[j] = 0  # the saved P holds the whole row, as the reference's does
            oi = out[b, h, i]  # (d,)
            oi[:] = 0
            for j in range(row_keys):
                w = prow[j]
                if dropout:
                    w = w * keep_scale if keep[b, h, i, j] else w - w
                if w != 0:
                    vj = v[b, h, j]
                    for c in range(d):
                        oi[c] += w * vj[c]


def _attention_backward(q, k, v, p, n_keys, keep, keep_scale, scale, g, gq, gk, gv):
    B, nh, S, d = q.shape
    dropout = keep.shape[0] > 0
    for n in prange(B * nh):
        b, h = n // nh, n % nh
        gk[b, h] = 0
        gv[b, h] = 0
        gp = np.empty(S, dtype=p.dtype)  # dP of one query row
        for i in range(S):
            gi = g[b, h, i]  # (d,)
            prow = p[b, h, i]  # (S,)
            row_dot = prow[0] - prow[0]  # Σ_j dP_ij P_ij
            row_keys = n_keys[b, i]  # P_ij = 0 beyond: no term of dQ, dK or dV
            for j in range(row_keys):
                vj = v[b, h, j]
                acc = gi[0] * vj[0]
                for c in range(1, d):
                    acc += gi[c] * vj[c]
                dropped = prow[j]
                if dropout:
                    if keep[b, h, i, j]:
                        acc = acc * keep_scale
                        dropped = dropped * keep_scale
                    else:
                        acc = acc - acc
                        dropped = dropped - dropped
                if dropped != 0:  # dV_j += P'_ij g_i
                    gvj = gv[b, h, j]
                    for c in range(d):
                        gvj[c] += dropped * gi[c]
                gp[j] = acc
                row_dot += acc * prow[j]
            qi = q[b, h, i]
            gqi = gq[b, h, i]
            gqi[:] = 0
            for j in range(row_keys):
                gs = prow[j] * (gp[j] - row_dot) * scale  # dS_ij, with the scale of S = QKᵀs
                if gs != 0:
                    kj = k[b, h, j]
                    gkj = gk[b, h, j]
                    for c in range(d):
                        gqi[c] += gs * kj[c]
                        gkj[c] += gs * qi[c]


_attention_fwd = _compile(_attention_forward)
_attention_bwd = _compile(_attention_backward)


def _keys_per_row(attention_mask, B: int, S: int, is_causal: bool):
    """(B, S) int64: how many keys (0, 1, ...) each query row reads; the rest have weight 0.

    Without the causal mask every row reads all S keys. With it, row i reads keys 0..i, so the
    kernels skip the masked upper triangle (about half the work) instead of computing zeros;
    except a row whose keys 0..i are all padding: the reference masks every key of it, and a
    softmax of S equal scores is uniform over all S keys (Hugging Face's number too), so that
    row reads all S.
    """
    if not is_causal:
        return np.full((B, S), S, dtype=np.int64)
    n_keys = np.broadcast_to(np.arange(1, S + 1, dtype=np.int64), (B, S))  # (B, S) i + 1
    if attention_mask is None:
        return np.ascontiguousarray(n_keys)
    sees_a_real_key = np.cumsum(attention_mask != 0, axis=1) > 0  # (B, S)
    return np.where(sees_a_real_key, n_keys, S)  # (B, S)


class FusedAttention(Function):
    """``tinymlm.nn.functional.Attention`` in one pass per query row (same contract and math).

    q, k, v (B, h, S, d); attention_mask (B, S) or None; dropout on the probabilities draws its
    mask from ``generator`` exactly as the reference does, so both give the same numbers.
    ``is_causal``: row i reads keys 0..i only (``_keys_per_row``), each way.
    """

    def forward(self, q, k, v, attention_mask=None, scale=1.0, dropout_p=0.0, generator=None,
                is_causal=False):
        q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))  # (B, h, S, d)
        B, nh, S, d = q.shape
        dtype = q.dtype
        if attention_mask is None:
            penalty = np.zeros((B, S), dtype=dtype)
        else:  # the reference's additive mask: the dtype's most negative value on padded keys
            penalty = (1 - attention_mask.astype(dtype)) * np.finfo(dtype).min  # (B, S)
        if dropout_p > 0.0:
            keep = generator.random((B, nh, S, S), dtype=np.float32) >= dropout_p
        else:
            keep = np.zeros((0, 0, 0, 0), dtype=np.bool_)
        keep_scale = _scalar(dtype, 1.0 / (1.0 - dropout_p))  # the reference's scaled mask value
        scale_ = _scalar(dtype, scale)
        p = np.empty((B, nh, S, S), dtype=dtype)
        out = np.empty_like(q)  # (B, h, S, d)
        n_keys = _keys_per_row(attention_mask, B, S, is_causal)  # (B, S)
        lowest = _scalar(dtype, np.finfo(dtype).min)
        threaded = B * nh * S * S * d >= PARALLEL_MIN_ELEMENTS
        _attention_fwd[threaded](q, k, v, penalty, is_causal, n_keys, lowest, keep, keep_scale,
                                 scale_, p, out)
        self.keep, self.keep_scale, self.scale, self.n_keys = keep, keep_scale, scale_, n_keys
        self.save_for_backward(q, k, v, p)
        return out

    def backward(self, g):
        q, k, v, p = self.saved_tensors
        g = np.ascontiguousarray(g, dtype=q.dtype)
        gq, gk, gv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
        B, nh, S, d = q.shape
        threaded = B * nh * S * S * d >= PARALLEL_MIN_ELEMENTS
        _attention_bwd[threaded](q, k, v, p, self.n_keys, self.keep, self.keep_scale, self.scale,
                                 g, gq, gk, gv)
        return gq, gk, gv, None


# --- layer norm ----------------------------------------------------------------------------------


def _layer_norm_forward(x, w, b, eps, inv_h, one, y, xhat, rstd):
    N, H = x.shape
    for r in prange(N):
        xr = x[r]
        s = xr[0]
        for c in range(1, H):
            s += xr[c]
        mu = s * inv_h
        s2 = (xr[0] - mu) * (xr[0] - mu)
        for c in range(1, H):
            s2 += (xr[c] - mu) * (xr[c] - mu)
        rs = one / np.sqrt(s2 * inv_h + eps)  # `one`, not 1: an int literal would give float64
        rstd[r] = rs
        for c in range(H):
            xh = (xr[c] - mu) * rs
            xhat[r, c] = xh
            y[r, c] = xh * w[c] + b[c]


def _layer_norm_backward(g, xhat, rstd, w, inv_h, gx, gw_parts, gb_parts):
    N, H = g.shape
    chunks = gw_parts.shape[0]
    rows_per_chunk = (N + chunks - 1) // chunks
    for ci in prange(chunks):  # each chunk of rows sums its own share of dw and db
        gw_c = gw_parts[ci]
        gb_c = gb_parts[ci]
        for r in range(ci * rows_per_chunk, min(N, (ci + 1) * rows_per_chunk)):
            gr, xr = g[r], xhat[r]
            mean_gh = gr[0] - gr[0]
            mean_ghx = mean_gh
            for c in range(H):
                gh = gr[c] * w[c]
                mean_gh += gh
                mean_ghx += gh * xr[c]
                gw_c[c] += gr[c] * xr[c]
                gb_c[c] += gr[c]
            mean_gh *= inv_h
            mean_ghx *= inv_h
            rs = rstd[r]
            for c in range(H):
                gx[r, c] = rs * (gr[c] * w[c] - mean_gh - xr[c] * mean_ghx)


_layer_norm_fwd = _compile(_layer_norm_forward)
_layer_norm_bwd = _compile(_layer_norm_backward)
_LAYER_NORM_CHUNKS = 16


class FusedLayerNorm(Function):
    """``tinymlm.nn.functional.LayerNorm`` over the last axis, with weight and bias."""

    def forward(self, x, weight, bias, eps=1e-5):
        H = x.shape[-1]
        x2 = np.ascontiguousarray(x).reshape(-1, H)  # (N, H)
        dtype = x.dtype
        y, xhat = np.empty_like(x2), np.empty_like(x2)
        rstd = np.empty(x2.shape[0], dtype=dtype)  # (N,)
        threaded = x2.size >= PARALLEL_MIN_ELEMENTS
        _layer_norm_fwd[threaded](
            x2,
            weight,
            bias,
            _scalar(dtype, eps),
            _scalar(dtype, 1.0 / H),
            _scalar(dtype, 1),
            y,
            xhat,
            rstd,
        )
        self.save_for_backward(xhat, rstd, weight)
        self.shape = x.shape
        return y.reshape(x.shape)

    def backward(self, g):
        xhat, rstd, weight = self.saved_tensors
        N, H = xhat.shape
        g2 = np.ascontiguousarray(g, dtype=xhat.dtype).reshape(N, H)  # (N, H)
        gx = np.empty_like(g2)
        chunks = _LAYER_NORM_CHUNKS if xhat.size >= PARALLEL_MIN_ELEMENTS else 1
        gw_parts = np.zeros((chunks, H), dtype=xhat.dtype)
        gb_parts = np.zeros((chunks, H), dtype=xhat.dtype)
        _layer_norm_bwd[chunks > 1](
            g2, xhat, rstd, weight, _scalar(xhat.dtype, 1.0 / H), gx, gw_parts, gb_parts
        )
        return gx.reshape(self.shape), gw_parts.sum(axis=0), gb_parts.sum(axis=0)


# --- GELU -----------------------------------------------------------------------------------------


def _gelu_forward(x, half, one, inv_sqrt2, y, cdf):
    for i in prange(x.size):
        c = half * (one + math.erf(x[i] * inv_sqrt2))  # Φ(x)
        cdf[i] = c
        y[i] = x[i] * c


def _gelu_backward(g, x, cdf, half, inv_sqrt_2pi, gx):
    for i in prange(x.size):
        xi = x[i]
        pdf = kernel_exp(-half * xi * xi) * inv_sqrt_2pi  # φ(x)
        gx[i] = g[i] * (cdf[i] + xi * pdf)


_gelu_fwd = _compile(_gelu_forward)
_gelu_bwd = _compile(_gelu_backward)


class FusedGELU(Function):
    """``tinymlm.nn.functional.GELU`` (exact erf) in one pass each way."""

    def forward(self, x):
        flat = np.ascontiguousarray(x).reshape(-1)
        dtype = x.dtype
        y, cdf = np.empty_like(flat), np.empty_like(flat)
        _gelu_fwd[flat.size >= PARALLEL_MIN_ELEMENTS](
            flat, _scalar(dtype, 0.5), _scalar(dtype, 1), _scalar(dtype, 1 / math.sqrt(2.0)), y, cdf
        )
        self.save_for_backward(flat, cdf)
        self.shape = x.shape
        return y.reshape(x.shape)

    def backward(self, g):
        flat, cdf = self.saved_tensors
        g = np.ascontiguousarray(g, dtype=flat.dtype).reshape(-1)
        gx = np.empty_like(flat)
        _gelu_bwd[flat.size >= PARALLEL_MIN_ELEMENTS](
            g,
            flat,
            cdf,
            _scalar(flat.dtype, 0.5),
            _scalar(flat.dtype, 1 / math.sqrt(2.0 * math.pi)),
            gx,
        )
        return gx.reshape(self.shape)


# --- the embedding gradient -----------------------------------------------------------------------


@njit(cache=True)
def _add_rows(ids, g, gw):
    for r in range(ids.size):  # serial: two positions may hold the same id
        row = gw[ids[r]]
        gr = g[r]
        for c in range(row.size):
            row[c] += gr[c]


def embedding_backward(ids, g, num_embeddings: int):
    """dW (V, H) of out = W[ids]: row r of dW sums g over the positions holding id r."""
    H = g.shape[-1]
    gw = np.zeros((num_embeddings, H), dtype=g.dtype)  # (V, H)
    _add_rows(np.ascontiguousarray(ids).reshape(-1), np.ascontiguousarray(g).reshape(-1, H), gw)
    return gw


# --- AdamW ----------------------------------------------------------------------------------------


def _adamw_update(
    p,
    g,
    m,
    v,
    decay_factor,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    inv_correction2,
    eps,
    step_size,
):
    for i in prange(p.size):
        gi = g[i]
        mi = m[i] * beta1 + one_minus_beta1 * gi
        vi = v[i] * beta2 + one_minus_beta2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay_factor - step_size * (mi / (np.sqrt(vi) * inv_correction2 + eps))


_adamw = _compile(_adamw_update)


def adamw_step(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step_size, correction2):
    """One AdamW update of ``p``, ``m``, ``v`` in place (``tinymlm.optim.AdamW.step``'s math).

    Returns False (touching nothing) when an array is not contiguous, so the caller falls back.
    """
    from tinymlm.optim import fused_update_scalars

    if not all(a.flags.c_contiguous for a in (p, g, m, v)) or g.dtype != p.dtype:
        return False
    scalars = fused_update_scalars(p.dtype, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                   weight_decay=weight_decay, step_size=step_size,
                                   correction2=correction2)
    _adamw[p.size >= PARALLEL_MIN_ELEMENTS](*(a.reshape(-1) for a in (p, g, m, v)), *scalars)
    return True
