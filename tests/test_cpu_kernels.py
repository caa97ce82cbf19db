"""The fused Numba CPU kernels (tinymlm/kernels/cpu_fused.py) against their reference paths.

Every fast path is one more implementation of a reference Function's contract: the same
values and gradients (float64 to ~1e-13, float32 to a few ulps of the reference), float32 kept
float32, a float64 gradient check through the Function itself, and the switch
(``use_kernels``) choosing between the two.
"""

from __future__ import annotations

import numpy as np
import pytest

from tinymlm import kernels
from tinymlm.autograd import Tensor
from tinymlm.gradcheck import gradcheck
from tinymlm.kernels import cpu_fused
from tinymlm.nn import functional as F
from tinymlm.optim import AdamW

TOL = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}


def run(fn, arrays, grad, consts=()):
    """fn(*Tensors, *consts) forward and backward: [output, grad of each array]."""
    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*tensors, *consts)
    out.backward(grad)
    return [out.data] + [t.grad for t in tensors]


def assert_same(fast, ref, dtype):
    for f, r in zip(fast, ref, strict=True):
        assert f.dtype == r.dtype == dtype
        np.testing.assert_allclose(f, r, **TOL[dtype])


# --- attention ------------------------------------------------------------------------------------


def attention_inputs(rng, dtype, B=3, h=2, S=7, d=4):
    q, k, v, g = (rng.standard_normal((B, h, S, d)).astype(dtype) for _ in range(4))
    mask = np.ones((B, S), dtype=np.int64)
    mask[1, 4:] = 0  # right padding
    mask[2, :] = 0  # a sequence with no real token: finite, like the reference
    return q, k, v, g, mask


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
@pytest.mark.parametrize("masked", [True, False])
def test_attention_matches_reference(rng, dtype, dropout_p, masked):
    q, k, v, g, mask = attention_inputs(rng, dtype)
    mask = mask if masked else None

    def with_(cls):
        return lambda q, k, v: cls.apply(
            q, k, v, mask, scale=0.4, dropout_p=dropout_p, generator=np.random.default_rng(7)
        )

    fast = run(with_(cpu_fused.FusedAttention), (q, k, v), g)
    ref = run(with_(F.Attention), (q, k, v), g)
    assert_same(fast, ref, dtype)
    assert all(np.isfinite(a).all() for a in fast)
    if masked:  # padded keys get weight exactly 0: their values don't reach any output
        v2 = v.copy()
        v2[1, :, 4:] = 1e6
        again = run(with_(cpu_fused.FusedAttention), (q, k, v2), g)[0]
        np.testing.assert_array_equal(again[:2], fast[0][:2])


def test_attention_takes_strided_views_and_one_token(rng):
    # q, k, v reach attention as permuted views of (B, S, H) projections.
    x = rng.standard_normal((2, 5, 3, 4))  # (B, S, h, d)
    view = x.transpose(0, 2, 1, 3)  # (B, h, S, d), not contiguous
    g = rng.standard_normal(view.shape)
    args = (view, view * 0.5, view + 1.0)
    fast = run(lambda *t: cpu_fused.FusedAttention.apply(*t, None, scale=0.5), args, g)
    ref = run(lambda *t: F.Attention.apply(*t, None, scale=0.5), args, g)
    assert_same(fast, ref, np.float64)
    one = [a[:, :, :1] for a in args]  # S = 1: the weight is 1, the score gradients 0
    fast = run(lambda *t: cpu_fused.FusedAttention.apply(*t, None), one, g[:, :, :1])
    ref = run(lambda *t: F.Attention.apply(*t, None), one, g[:, :, :1])
    assert_same(fast, ref, np.float64)


def test_attention_gradcheck(rng):
    q, k, v, _, mask = attention_inputs(rng, np.float64, B=3, h=2, S=5, d=3)
    mask[2, :3] = 1  # (an all-padding row's scores sit under -1.8e308: no finite differences)
    tensors = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    result = gradcheck(
        lambda q, k, v: cpu_fused.FusedAttention.apply(q, k, v, mask, scale=0.6), tensors
    )
    assert result.ok, str(result)


def test_attention_threaded_path_matches(rng, monkeypatch):
    monkeypatch.setattr(cpu_fused, "PARALLEL_MIN_ELEMENTS", 1)  # the prange build on tiny data
    q, k, v, g, mask = attention_inputs(rng, np.float32)

    def fn(cls):
        return lambda q, k, v: cls.apply(q, k, v, mask, scale=0.4)

    assert_same(
        run(fn(cpu_fused.FusedAttention), (q, k, v), g),
        run(fn(F.Attention), (q, k, v), g),
        np.float32,
    )


# --- layer norm -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threaded", [False, True])
def test_layer_norm_matches_reference(rng, dtype, threaded, monkeypatch):
    if threaded:
        monkeypatch.setattr(cpu_fused, "PARALLEL_MIN_ELEMENTS", 1)
    x = (rng.standard_normal((4, 9, 16)) * 3 + 2).astype(dtype)
    x[0, 0] = 5.0  # a constant row: variance 0, only eps keeps it finite
    w, b = rng.standard_normal(16).astype(dtype), rng.standard_normal(16).astype(dtype)
    g = rng.standard_normal(x.shape).astype(dtype)
    fast = run(lambda x, w, b: cpu_fused.FusedLayerNorm.apply(x, w, b, eps=1e-12), (x, w, b), g)
    ref = run(lambda x, w, b: F.LayerNorm.apply(x, w, b, n_axes=1, eps=1e-12), (x, w, b), g)
    assert_same(fast, ref, dtype)
    assert np.isfinite(fast[1]).all()


def test_layer_norm_gradcheck(rng):
    x, w, b = rng.standard_normal((3, 6)), rng.standard_normal(6), rng.standard_normal(6)
    tensors = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    result = gradcheck(lambda x, w, b: cpu_fused.FusedLayerNorm.apply(x, w, b, eps=1e-5), tensors)
    assert result.ok, str(result)


# --- GELU -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threaded", [False, True])
def test_gelu_matches_reference(rng, dtype, threaded, monkeypatch):
    if threaded:
        monkeypatch.setattr(cpu_fused, "PARALLEL_MIN_ELEMENTS", 1)
    x = np.concatenate([rng.standard_normal(200) * 4, [0.0, -0.0, 12.0, -12.0, 40.0, -40.0]])
    x = x.astype(dtype).reshape(2, -1)
    g = rng.standard_normal(x.shape).astype(dtype)
    assert_same(run(cpu_fused.FusedGELU.apply, (x,), g), run(F.GELU.apply, (x,), g), dtype)


def test_gelu_gradcheck(rng):
    result = gradcheck(
        cpu_fused.FusedGELU.apply, [Tensor(rng.standard_normal((4, 5)) * 2, requires_grad=True)]
    )
    assert result.ok, str(result)


# --- the embedding gradient -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_embedding_gradient_adds_repeated_ids(rng, dtype):
    ids = np.array([[3, 1, 3, 0], [3, 7, 1, 1]])  # repeats, and unused rows stay zero
    g = rng.standard_normal((2, 4, 5)).astype(dtype)
    expected = np.zeros((8, 5), dtype=dtype)
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, 5))
    got = cpu_fused.embedding_backward(ids, g, 8)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, **TOL[dtype])
    weight = rng.standard_normal((8, 5)).astype(dtype)
    grads = {}
    for mode in ("reference", "numba"):
        with kernels.use_kernels(mode):
            w = Tensor(weight, requires_grad=True)
            F.embedding(ids, w).backward(g)
            grads[mode] = w.grad
    np.testing.assert_allclose(grads["numba"], grads["reference"], **TOL[dtype])


# --- AdamW ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adamw_fused_matches_reference(dtype):
    def train(mode, threaded, monkeypatch):
        if threaded:
            monkeypatch.setattr(cpu_fused, "PARALLEL_MIN_ELEMENTS", 1)
        rng = np.random.default_rng(0)
        params = [
            Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True)
            for s in ((30, 7), (7,), (5, 4))
        ]
        opt = AdamW(
            [
                {"params": params[:1], "weight_decay": 0.1},
                {"params": params[1:], "weight_decay": 0.0},
            ],
            lr=1e-2,
        )
        with kernels.use_kernels(mode):
            for _ in range(6):
                for p in params:
                    p.grad = rng.standard_normal(p.shape).astype(dtype)
                params[2].grad = np.asfortranarray(params[2].grad)  # not contiguous: fallback
                opt.step()
        return [p.data for p in params] + [a for p in params for a in opt.state[id(p)]]

    with pytest.MonkeyPatch.context() as mp:
        ref = train("reference", False, mp)
        for threaded in (False, True):
            fast = train("numba", threaded, mp)
            assert_same(fast, ref, dtype)


# --- the switch -----------------------------------------------------------------------------------


def test_switch_picks_kernels_and_reference(rng):
    x = Tensor(rng.standard_normal((2, 3, 8)).astype(np.float32), requires_grad=True)
    w, b = Tensor(np.ones(8, np.float32)), Tensor(np.zeros(8, np.float32))
    q = Tensor(rng.standard_normal((2, 2, 3, 4)).astype(np.float32), requires_grad=True)
    expected = {
        "numba": ("FusedGELU", "FusedLayerNorm", "FusedAttention"),
        "reference": ("GELU", "LayerNorm", "Attention"),
    }
    for mode, names in expected.items():
        with kernels.use_kernels(mode):
            made = (
                F.gelu(x),
                F.layer_norm(x, 8, w, b),
                F.scaled_dot_product_attention(q, q, q, None),
            )
        assert tuple(type(t._ctx).__name__ for t in made) == names


# --- Linear's weight gradient: the faster of two BLAS layouts -------------------------------------


@pytest.mark.parametrize("shape", [(2, 5, 3, 8), (2, 5, 8, 3), (1, 7, 4, 4)])  # B, S, in, out
def test_linear_weight_gradient_both_layouts(rng, shape):
    B, S, n_in, n_out = shape
    x, g = rng.standard_normal((B, S, n_in)), rng.standard_normal((B, S, n_out))
    w, b = rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)
    out, gx, gw, gb = run(F.linear, (x, w, b), g)
    x2, g2 = x.reshape(-1, n_in), g.reshape(-1, n_out)
    np.testing.assert_allclose(gw, g2.T @ x2, rtol=1e-12)  # dW = Gᵀ X, however it was made
    np.testing.assert_allclose(gx, g @ w, rtol=1e-12)
    np.testing.assert_allclose(gb, g2.sum(axis=0), rtol=1e-12)
    assert gw.flags.c_contiguous  # so the fused AdamW takes it


