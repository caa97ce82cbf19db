"""The fused operations of a Transformer, each one Function with a hand-derived backward pass.

Arguments follow ``torch.nn.functional``'s positional order. Each Function's docstring carries
its derivation; ``g`` is the gradient of the loss with respect to the Function's output.
The Functions here are the reference path. Where a fused Numba kernel implements the same
Function (``tinymlm.kernels``), ``tinymlm.kernels.select`` says which one runs: each function
below asks it once per call, and tests hold the two implementations together.
"""

from __future__ import annotations

import math

import numpy as np

from tinymlm import backend, kernels, ops
from tinymlm.autograd import Function, Tensor, raw

_xp = backend.get_array_module


# --- linear -------------------------------------------------------------------------------------


class Linear(Function):
    """y = x Wᵀ + b for x (..., in), W (out, in), b (out,).

    With x flattened to X (N, in) and g to G (N, out): dX = G W, dW = Gᵀ X, db = Σ_rows G.
    """

    def forward(self, x, weight, bias=None):
        self.save_for_backward(x, weight)
        # Flattened to 2-D: one BLAS call (NumPy's stacked 3-D @ 2-D is several times slower).
        y = x.reshape(-1, x.shape[-1]) @ weight.T  # (N, out)
        if bias is not None:
            y += bias
        return y.reshape(*x.shape[:-1], weight.shape[0])  # (..., out)

    def backward(self, g):
        x, weight = self.saved_tensors
        needs = (*self.needs_input_grad, False)[:3]  # no bias: no bias gradient
        x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])  # (N, in), (N, out)
        gx, gw, gb = ops.linear_grads(x2, weight, g2, needs)
        return (None if gx is None else gx.reshape(x.shape)), gw, gb


def linear(x, weight, bias=None):
    if bias is None:
        return Linear.apply(x, weight)
    return Linear.apply(x, weight, bias)


# --- softmax and log-softmax --------------------------------------------------------------------


class Softmax(Function):
    """p = exp(x − max x) / Σ exp(x − max x) along ``axis``.

    ∂p_i/∂x_j = p_i (δ_ij − p_j), so dx_j = Σ_i g_i p_i (δ_ij − p_j) = p_j (g_j − Σ_i g_i p_i).
    """

    def forward(self, x, axis=-1):
        xp = _xp(x)
        e = xp.exp(x - x.max(axis=axis, keepdims=True))
        p = e / e.sum(axis=axis, keepdims=True)
        self.axis = axis
        self.save_for_backward(p)
        return p

    def backward(self, g):
        (p,) = self.saved_tensors
        return p * (g - (g * p).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    """y = x − logsumexp(x).  ∂y_i/∂x_j = δ_ij − p_j, so dx = g − p Σ_i g_i with p = exp(y)."""

    def forward(self, x, axis=-1):
        xp = _xp(x)
        shifted = x - x.max(axis=axis, keepdims=True)
        y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        self.axis = axis
        self.save_for_backward(y)
        return y

    def backward(self, g):
        (y,) = self.saved_tensors
        return g - _xp(y).exp(y) * g.sum(axis=self.axis, keepdims=True)


def softmax(x, axis=-1):
    return Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(x, axis=axis)


# --- GELU ---------------------------------------------------------------------------------------


class GELU(Function):
    """Exact GELU: y = x Φ(x) = ½ x (1 + erf(x/√2)).

    dy/dx = Φ(x) + x φ(x), with φ(x) = exp(−x²/2)/√(2π) the standard normal density.
    """

    def forward(self, x):
        cdf = 0.5 * (1.0 + backend.erf(x * (1.0 / math.sqrt(2.0))))  # Φ(x)
        self.save_for_backward(x, cdf)
        return x * cdf

    def backward(self, g):
        x, cdf = self.saved_tensors
        pdf = _xp(x).exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))  # φ(x)
        return g * (cdf + x * pdf)


def gelu(x):
    fused = kernels.select("gelu", raw(x))
    return (fused.impl if fused else GELU).apply(x)


# --- layer norm ---------------------------------------------------------------------------------


class LayerNorm(Function):
    """y = x̂ w + b with x̂ = (x − μ) r, r = 1/√(σ² + ε), statistics over the last n axes.

    With N normalized elements and ĝ = g w:
        dx = r (ĝ − mean(ĝ) − x̂ mean(ĝ x̂)),   dw = Σ_batch g x̂,   db = Σ_batch g.
    (Differentiate x̂ through μ and σ²: ∂μ/∂x = 1/N, ∂σ²/∂x_j = 2(x_j − μ)/N.)
    """

    def forward(self, x, weight=None, bias=None, n_axes=1, eps=1e-5):
        axes = tuple(range(x.ndim - n_axes, x.ndim))
        mu = x.mean(axis=axes, keepdims=True)
        centered = x - mu
        var = (centered * centered).mean(axis=axes, keepdims=True)
        rstd = 1.0 / _xp(x).sqrt(var + eps)
        xhat = centered * rstd
        self.axes = axes
        self.save_for_backward(xhat, rstd, weight)
        y = xhat
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y

    def backward(self, g):
        xhat, rstd, weight = self.saved_tensors
        axes = self.axes
        batch_axes = tuple(range(g.ndim - len(axes)))
        gx = gw = gb = None
        if self.needs_input_grad[0]:
            ghat = g * weight if weight is not None else g
            gx = rstd * (
                ghat
                - ghat.mean(axis=axes, keepdims=True)
                - xhat * (ghat * xhat).mean(axis=axes, keepdims=True)
            )
        if len(self.needs_input_grad) > 1 and self.needs_input_grad[1]:
            gw = (g * xhat).sum(axis=batch_axes)
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            gb = g.sum(axis=batch_axes)
        return gx, gw, gb


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    if tuple(raw(x).shape[-len(normalized_shape) :]) != tuple(normalized_shape):
        raise ValueError(
            f"layer_norm: the last axes of x {tuple(raw(x).shape)} must be {normalized_shape}"
        )
    if len(normalized_shape) == 1 and weight is not None and bias is not None:
        fused = kernels.select("layer_norm", raw(x), raw(weight), raw(bias))
        if fused:
            return fused.impl.apply(x, weight, bias, eps=eps)
    return LayerNorm.apply(x, weight, bias, n_axes=len(normalized_shape), eps=eps)


# --- dropout ------------------------------------------------------------------------------------


class Dropout(Function):
    """Inverted dropout: y = x m / (1 − p), m ~ Bernoulli(1 − p); dx = g m / (1 − p)."""

    def forward(self, x, p=0.5, generator=None):
        keep = generator.random(x.shape, dtype=np.float32) >= p
        self.scaled_mask = keep.astype(x.dtype) * (1.0 / (1.0 - p))  # (...) same shape as x
        return x * self.scaled_mask

    def backward(self, g):
        return g * self.scaled_mask


def dropout(x, p=0.5, training=True, generator=None):
    """Zero each element with probability p while training; identity otherwise.

    Random numbers come from ``generator`` or the seeded default generator of x's device
    (``tinymlm.manual_seed``), so a run is reproducible.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x if isinstance(x, Tensor) else Tensor(x)
    if generator is None:
        generator = backend.default_generator(backend.device_of(raw(x)))
    return Dropout.apply(x, p=p, generator=generator)


# --- embedding ----------------------------------------------------------------------------------


class Embedding(Function):
    """out = W[ids]. The gradient of row r of W is the sum of g over every position holding r;
    the ``padding_idx`` row gets none (PyTorch's rule: the padding vector stays as it is)."""

    def forward(self, weight, ids, padding_idx=None):
        self.ids, self.shape, self.padding_idx = ids, weight.shape, padding_idx
        return weight[ids]  # (..., H)

    def backward(self, g):
        fused = kernels.select("embedding_backward", g)
        if fused:  # one loop over rows instead of np.add.at's element-wise path
            gw = fused.impl(self.ids, g, self.shape[0])  # (V, H)
        else:
            gw = _xp(g).zeros(self.shape, dtype=g.dtype)  # (V, H)
            backend.scatter_add(gw, self.ids.reshape(-1), g.reshape(-1, self.shape[1]))
        if self.padding_idx is not None:
            gw[self.padding_idx] = 0
        return gw, None


def embedding(ids, weight, padding_idx=None):
    ids = raw(ids)
    if not hasattr(ids, "reshape"):  # a list of ids
        ids = _xp(raw(weight)).asarray(ids)
    return Embedding.apply(weight, ids, padding_idx=padding_idx)


# --- cross-entropy ------------------------------------------------------------------------------


class CrossEntropy(Function):
    """Mean over the M counted rows of −log softmax(x)[target]; rows with ignore_index don't count.

    With p = softmax(x) and y the one-hot target, d loss/dx = (p − y) / M for a counted row and
    0 for an ignored one. With no counted row the loss is exactly 0 and so is the gradient.
    """

    def forward(self, logits, target, ignore_index=-100):
        xp = _xp(logits, target)
        rows = xp.arange(logits.shape[0])
        counted = target != ignore_index  # (N,)
        safe_target = xp.where(counted, target, 0)
        m = logits.max(axis=1, keepdims=True)  # (N, 1)
        lse = m + xp.log(xp.exp(logits - m).sum(axis=1, keepdims=True))  # (N, 1)
        nll = (lse[:, 0] - logits[rows, safe_target]) * counted  # (N,)
        self.inv_count = 1.0 / xp.maximum(counted.sum(), 1).astype(logits.dtype)
        self.save_for_backward(logits, lse, safe_target, counted)
        return nll.sum() * self.inv_count

    def backward(self, g):
        logits, lse, safe_target, counted = self.saved_tensors
        xp = _xp(logits)
        grad = xp.exp(logits - lse)  # (N, V) softmax
        grad[xp.arange(logits.shape[0]), safe_target] -= 1
        grad *= (counted * (g * self.inv_count)).astype(logits.dtype)[:, None]
        return grad, None


def _check_targets(target, num_classes: int, ignore_index: int) -> None:
    # Checked on the CPU only: on the GPU the same check would wait for the device every step.
    if backend.is_cupy_array(target):
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bad.any():
        value = int(target[bad][0])
        raise ValueError(
            f"cross_entropy: target {value} is outside [0, {num_classes}); mark positions that "
            f"should not be predicted with {ignore_index} (not -1)"
        )


def cross_entropy(logits, target, ignore_index=-100):
    """Mean cross-entropy of (N, C) logits against (N,) integer targets (PyTorch's semantics)."""
    target, raw_logits = raw(target), raw(logits)
    if raw_logits.ndim != 2 or target.shape != raw_logits.shape[:1]:
        raise ValueError(
            f"cross_entropy wants logits (N, C) and target (N,), got {raw_logits.shape} "
            f"and {target.shape}"
        )
    _check_targets(target, raw_logits.shape[1], ignore_index)
    fused = kernels.select("cross_entropy", raw_logits)
    return (fused.impl if fused else CrossEntropy).apply(logits, target, ignore_index=ignore_index)


def linear_cross_entropy(x, weight, bias, target, ignore_index=-100):
    """``cross_entropy(linear(x, weight, bias), target)``: an output layer and its loss.

    x (N, in), weight (C, in), bias (C,) or None, target (N,). The fused implementation keeps
    the (N, C) logits to itself and overwrites them with their gradient during backward, so the
    loss needs no second N x C buffer; the reference path is the two Functions above. Use it
    when nobody needs the logits themselves (a training step); ask ``linear`` for them otherwise.
    """
    target, raw_x, raw_w = raw(target), raw(x), raw(weight)
    if raw_x.ndim != 2 or target.shape != raw_x.shape[:1]:
        raise ValueError(
            f"linear_cross_entropy wants x (N, in) and target (N,), got {raw_x.shape} "
            f"and {target.shape}"
        )
    _check_targets(target, raw_w.shape[0], ignore_index)
    arrays = (raw_x, raw_w) if bias is None else (raw_x, raw_w, raw(bias))
    fused = kernels.select("linear_cross_entropy", *arrays)
    if fused is None:
        return cross_entropy(linear(x, weight, bias), target, ignore_index=ignore_index)
    return fused.impl.apply(x, weight, bias, target, ignore_index=ignore_index)


# --- attention ----------------------------------------------------------------------------------


class Attention(Function):
    """out = P V with P = softmax(Q Kᵀ s + mask), s the scale; q, k, v (B, h, S, d).

    The mask adds (1 − m)·(the dtype's most negative value) to every score of a padded key, as
    Hugging Face does: a padded key's weight is exactly 0. ``is_causal`` multiplies m by the
    lower triangle first (query i sees keys j ≤ i), as Hugging Face's decoder does: one mask,
    so a score is never pushed down twice (min + min would overflow to −inf). With optional
    dropout on P (mask D, P' = P D):
        dV = P'ᵀ g,   dP = (g Vᵀ) D,   dS = P (dP − rowsum(dP P)),   dQ = dS K s,   dK = dSᵀ Q s.
    """

    def forward(self, q, k, v, attention_mask=None, scale=1.0, dropout_p=0.0, generator=None,
                is_causal=False):
        xp = _xp(q, k, v, attention_mask)
        scores = (q @ xp.swapaxes(k, -1, -2)) * scale  # (B, h, S, S)
        allowed = None
        if attention_mask is not None:
            allowed = attention_mask.astype(q.dtype)[:, None, None, :]  # (B, 1, 1, S)
        if is_causal:
            S = q.shape[-2]
            lower = xp.tril(xp.ones((S, S), dtype=q.dtype))  # (S, S) 1 where key j ≤ query i
            allowed = lower if allowed is None else allowed * lower  # (B, 1, S, S)
        if allowed is not None:
            scores += (1 - allowed) * np.finfo(q.dtype).min  # (B, h, S, S) via broadcasting
        scores -= scores.max(axis=-1, keepdims=True)
        p = xp.exp(scores, out=scores)
        p /= p.sum(axis=-1, keepdims=True)  # (B, h, S, S)
        dropped = p
        self.drop_mask = None
        if dropout_p > 0.0:
            keep = generator.random(p.shape, dtype=np.float32) >= dropout_p
            self.drop_mask = keep.astype(q.dtype) * (1.0 / (1.0 - dropout_p))
            dropped = p * self.drop_mask
        self.scale = scale
        self.save_for_backward(q, k, v, p, dropped)
        return dropped @ v  # (B, h, S, d)

    def backward(self, g):
        q, k, v, p, dropped = self.saved_tensors
        xp = _xp(g)
        gv = xp.swapaxes(dropped, -1, -2) @ g  # (B, h, S, d)
        gp = g @ xp.swapaxes(v, -1, -2)  # (B, h, S, S)
        if self.drop_mask is not None:
            gp *= self.drop_mask
        gs = p * (gp - (gp * p).sum(axis=-1, keepdims=True))  # (B, h, S, S)
        gq = (gs @ k) * self.scale  # (B, h, S, d)
        gk = (xp.swapaxes(gs, -1, -2) @ q) * self.scale  # (B, h, S, d)
        return gq, gk, gv, None


def scaled_dot_product_attention(
    q, k, v, attention_mask=None, dropout_p=0.0, training=True, scale=None, generator=None,
    is_causal=False,
):
    """softmax(q kᵀ/√d + mask) v for q, k, v (B, heads, S, d) and attention_mask (B, S).

    attention_mask: 1 = real token, 0 = padding (Hugging Face's sense). Padded keys get weight
    exactly 0; query rows at padded positions are computed like any other. ``is_causal``
    (PyTorch's name): query i also gives weight exactly 0 to every key after it (a decoder).
    """
    raw_q = raw(q)
    if scale is None:
        scale = 1.0 / math.sqrt(raw_q.shape[-1])
    mask = raw(attention_mask)
    if not training:
        dropout_p = 0.0
    if dropout_p > 0.0 and generator is None:
        generator = backend.default_generator(backend.device_of(raw_q))
    op = "attention" if dropout_p == 0.0 else "attention_dropout"
    fused = kernels.select(op, raw_q, raw(k), raw(v))
    if fused and backend.is_cupy_array(raw_q):
        # None where the kernel can't take these inputs, or (auto) measured slower for the shape
        out = fused.impl(
            q, k, v, mask, scale, only_if_faster=fused.only_if_faster, is_causal=is_causal
        )
        if out is not None:
            return out
    elif fused:
        return fused.impl.apply(
            q, k, v, mask, scale=scale, dropout_p=dropout_p, generator=generator,
            is_causal=is_causal,
        )
    return Attention.apply(
        q, k, v, mask, scale=scale, dropout_p=dropout_p, generator=generator, is_causal=is_causal
    )


__all__ = [
    "cross_entropy",
    "dropout",
    "embedding",
    "gelu",
    "layer_norm",
    "linear",
    "linear_cross_entropy",
    "log_softmax",
    "ops",
    "scaled_dot_product_attention",
    "softmax",
]
