"""tinymlm.nn.functional: float64 gradcheck, PyTorch parity, masked zeros, edge cases, dtypes.

Every case runs on the reference path (``use_kernels("reference")``); the fused kernels have
their own tests that hold them to this path.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tinymlm import backend, kernels
from tinymlm.autograd import Tensor
from tinymlm.nn import functional as F


@pytest.fixture(autouse=True)
def reference_path():
    with kernels.use_kernels("reference"):
        yield


IDS_REPEATED = np.array([[1, 3, 1], [0, 1, 1]])  # (2, 3) token ids, several repeats
TARGETS = np.array([2, -100, 0, 3, -100])  # (5,) two ignored rows
PAD_MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])  # (B=2, S=4) ragged padding

# (id, case(L, *xs), input specs): a spec is a shape, or ("pos", shape) for positive inputs.
CASES = [
    ("softmax", lambda L, x: L.softmax(x), [(2, 5)]),
    ("softmax_axis0", lambda L, x: L.softmax(x, 0), [(3, 2, 2)]),
    ("log_softmax", lambda L, x: L.log_softmax(x), [(2, 5)]),
    ("log_softmax_axis1", lambda L, x: L.log_softmax(x, 1), [(2, 3, 2)]),
    ("gelu", lambda L, x: L.gelu(x * 2.0), [(3, 4)]),
    ("layer_norm", lambda L, x: L.layer_norm(x, 4), [(3, 4)]),
    ("layer_norm_affine", lambda L, x, w, b: L.layer_norm(x, 4, w, b), [(2, 3, 4), (4,), (4,)]),
    ("layer_norm_2_axes", lambda L, x: L.layer_norm(x, (2, 3)), [(2, 2, 3)]),
    (
        "layer_norm_2_axes_affine",
        lambda L, x, w, b: L.layer_norm(x, (2, 3), w, b),
        [(2, 2, 3), (2, 3), (2, 3)],
    ),
    ("layer_norm_eps", lambda L, x: L.layer_norm(x, 3, eps=0.5), [(2, 3)]),
    ("dropout", lambda L, x: L.dropout(x, 0.4, 11), [(3, 4)]),
    ("embedding_repeated_ids", lambda L, w: L.embedding(IDS_REPEATED, w), [(4, 3)]),
    ("linear", lambda L, x, w, b: L.linear(x, w, b), [(2, 3, 4), (5, 4), (5,)]),
    ("linear_no_bias", lambda L, x, w: L.linear(x, w), [(3, 4), (2, 4)]),
    ("cross_entropy", lambda L, x: L.cross_entropy(x, TARGETS), [(5, 4)]),
    ("cross_entropy_all_counted", lambda L, x: L.cross_entropy(x, np.array([1, 0, 2])), [(3, 4)]),
    ("attention", lambda L, q, k, v: L.sdpa(q, k, v), [(1, 2, 3, 2)] * 3),
    ("attention_padded", lambda L, q, k, v: L.sdpa(q, k, v, PAD_MASK), [(2, 1, 4, 2)] * 3),
    (
        "attention_padded_dropout",
        lambda L, q, k, v: L.sdpa(q, k, v, PAD_MASK, dropout_p=0.3, seed=5),
        [(2, 1, 4, 2)] * 3,
    ),
    # a small Transformer block: fan-out of x, a diamond through the residual, shared weights
    (
        "block",
        lambda L, x, w, g: L.layer_norm(
            x + L.linear(L.gelu(L.sdpa(x[:, None], x[:, None], x[:, None])[:, 0]), w), 3, g
        ),
        [(2, 3, 3), (3, 3), (3,)],
    ),
    (
        "embed_project_loss",
        lambda L, w: L.cross_entropy(
            L.linear(L.embedding(IDS_REPEATED, w).reshape(6, 3), w), np.array([1, -100, 3, 0, 0, 2])
        ),
        [(4, 3)],
    ),
]

CASE_IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name, case, specs", CASES, ids=CASE_IDS)
def test_gradcheck(name, case, specs, rng, make_arrays, check_gradients):
    check_gradients(case, make_arrays(rng, specs))


@pytest.mark.parametrize("name, case, specs", CASES, ids=CASE_IDS)
def test_matches_torch(name, case, specs, rng, make_arrays, compare_with_torch):
    compare_with_torch(case, make_arrays(rng, specs))


def test_attention_matches_torch_sdpa_with_float_mask(rng, torch):
    """The same numbers as torch's own scaled_dot_product_attention given an additive mask."""
    q, k, v = (rng.standard_normal((2, 2, 4, 3)) for _ in range(3))
    mask = (1.0 - PAD_MASK[:, None, None, :]) * np.finfo(np.float64).min  # (B, 1, 1, S)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.tensor(mask))
    w = rng.standard_normal(ref.shape)
    (ref * torch.tensor(w)).sum().backward()

    oq, ok, ov = (Tensor(a, requires_grad=True) for a in (q, k, v))
    out = F.scaled_dot_product_attention(oq, ok, ov, PAD_MASK)
    (out * w).sum().backward()
    # atol: gradients at padded keys are exactly 0 here and ~1e-17 in torch's fused order
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in ((oq, tq), (ok, tk), (ov, tv)):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


# --- masked positions: exactly zero ----------------------------------------------------------


def test_cross_entropy_ignored_rows_have_exactly_zero_gradient(rng):
    x = Tensor(rng.standard_normal((5, 4)), requires_grad=True)
    F.cross_entropy(x, TARGETS).backward()
    ignored = TARGETS == -100
    assert np.all(x.grad[ignored] == 0.0)
    assert np.all(x.grad[~ignored] != 0.0)


def test_cross_entropy_is_the_mean_over_counted_rows(rng):
    x = rng.standard_normal((5, 4))
    log_p = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    counted = np.flatnonzero(TARGETS != -100)
    expected = -log_p[counted, TARGETS[counted]].mean()
    np.testing.assert_allclose(F.cross_entropy(Tensor(x), TARGETS).item(), expected, rtol=1e-12)


def test_attention_padded_keys_get_exactly_zero_weight_and_gradient(rng):
    q, k, v = (Tensor(rng.standard_normal((2, 2, 4, 3)), requires_grad=True) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, PAD_MASK)
    (out * rng.standard_normal(out.shape)).sum().backward()
    padded = PAD_MASK == 0  # (B, S)
    assert np.all(k.grad.transpose(0, 2, 1, 3)[padded] == 0.0)  # (B, S, h, d) at padded keys
    assert np.all(v.grad.transpose(0, 2, 1, 3)[padded] == 0.0)
    # Weight exactly 0: whatever sits in a padded key/value changes nothing, bit for bit.
    k2, v2 = k.data.copy(), v.data.copy()
    k2.transpose(0, 2, 1, 3)[padded] = 1e3
    v2.transpose(0, 2, 1, 3)[padded] = -1e3
    out2 = F.scaled_dot_product_attention(q.data, k2, v2, PAD_MASK)
    np.testing.assert_array_equal(out2.data, out.data)


def test_embedding_gradient_sums_repeated_ids(rng):
    w = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    g = rng.standard_normal((2, 3, 3))
    F.embedding(IDS_REPEATED, w).backward(g)
    expected = np.zeros((4, 3))
    for position, token in np.ndenumerate(IDS_REPEATED):
        expected[token] += g[position]
    np.testing.assert_allclose(w.grad, expected, rtol=1e-14)
    assert np.all(w.grad[2] == 0.0)  # id 2 never appears


@pytest.mark.parametrize("mode", ["reference", "numba"])
def test_the_padding_row_gets_no_gradient(mode, rng):
    # PyTorch's padding_idx rule: positions holding the padding id send their gradient nowhere.
    w = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    g = rng.standard_normal((2, 3, 3))
    with kernels.use_kernels(mode):
        F.embedding(IDS_REPEATED, w, padding_idx=0).backward(g)
    assert np.any(IDS_REPEATED == 0) and np.all(w.grad[0] == 0.0)
    expected = np.zeros((4, 3))
    for position, token in np.ndenumerate(IDS_REPEATED):
        expected[token] += g[position] if token != 0 else 0.0
    np.testing.assert_allclose(w.grad, expected, rtol=1e-14)


# --- edge cases ------------------------------------------------------------------------------


def test_cross_entropy_with_every_row_ignored_is_exactly_zero_without_warnings(rng):
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        loss = F.cross_entropy(x, np.full(3, -100))
        loss.backward()
    assert loss.item() == 0.0
    assert np.all(x.grad == 0.0)


def test_attention_on_an_all_padding_sequence_is_finite(rng):
    mask = np.array([[1, 1, 0], [0, 0, 0]])  # the second sequence is all padding
    q, k, v = (Tensor(rng.standard_normal((2, 2, 3, 2)), requires_grad=True) for _ in range(3))
    # exp of the most negative float underflows to 0 by design: only overflow / invalid count
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out = F.scaled_dot_product_attention(q, k, v, mask)
        (out * rng.standard_normal(out.shape)).sum().backward()
    for a in (out.data, q.grad, k.grad, v.grad):
        assert np.all(np.isfinite(a))


@pytest.mark.parametrize("bad", [-1, 4, 7])
def test_cross_entropy_rejects_out_of_range_targets(bad, rng):
    with pytest.raises(ValueError, match="-100"):
        F.cross_entropy(Tensor(rng.standard_normal((2, 4))), np.array([0, bad]))


def test_cross_entropy_rejects_bad_shapes(rng):
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        F.cross_entropy(Tensor(rng.standard_normal((2, 3, 4))), np.array([0, 1]))


def test_layer_norm_rejects_a_wrong_normalized_shape(rng):
    with pytest.raises(ValueError, match="layer_norm"):
        F.layer_norm(Tensor(rng.standard_normal((2, 3))), 4)


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_dropout_rejects_bad_probabilities(p, rng):
    with pytest.raises(ValueError, match="dropout"):
        F.dropout(Tensor(rng.standard_normal(3)), p)


def test_dropout_is_identity_when_not_training_or_p_zero(rng):
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x


def test_dropout_keeps_the_expectation(rng):
    x = Tensor(np.ones(20_000))
    y = F.dropout(x, 0.25, generator=np.random.default_rng(0)).data
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-15)
    assert abs(kept.mean() - 0.75) < 0.02  # 5 standard deviations of a Bernoulli mean


def test_manual_seed_makes_dropout_reproducible(rng):
    x = Tensor(rng.standard_normal((4, 5)))
    backend.manual_seed(123)
    first, second = F.dropout(x, 0.5).data, F.dropout(x, 0.5).data
    backend.manual_seed(123)
    np.testing.assert_array_equal(F.dropout(x, 0.5).data, first)
    np.testing.assert_array_equal(F.dropout(x, 0.5).data, second)
    assert not np.array_equal(first, second)  # the stream moves on between calls
    backend.manual_seed(0)  # leave the default generators as a fresh process has them


def test_attention_dropout_uses_manual_seed(rng):
    q = Tensor(rng.standard_normal((1, 1, 4, 2)))
    backend.manual_seed(7)
    a = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5).data
    backend.manual_seed(7)
    b = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5).data
    c = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5, training=False).data
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(c, F.scaled_dot_product_attention(q, q, q).data)
    backend.manual_seed(0)


# --- float32 stays float32 -------------------------------------------------------------------

FLOAT32_CASES = [
    ("softmax", lambda x, w: F.softmax(x * 2.0)),
    ("log_softmax", lambda x, w: F.log_softmax(x - 1.0)),
    ("gelu", lambda x, w: F.gelu(x)),
    ("layer_norm", lambda x, w: F.layer_norm(x, 3, w[0], w[1], eps=1e-5)),
    ("dropout", lambda x, w: F.dropout(x, 0.5, generator=np.random.default_rng(0))),
    ("embedding", lambda x, w: F.embedding(np.array([[0, 1, 0]]), w)),
    ("linear", lambda x, w: F.linear(x, w, w[0])),
    ("cross_entropy", lambda x, w: F.cross_entropy(x.reshape(4, 3), np.array([0, -100, 2, 1]))),
    (
        "attention",
        lambda x, w: F.scaled_dot_product_attention(
            x[:, None], w[None, None], w[None, None], np.array([[1, 1, 0]]), dropout_p=0.2
        ),
    ),
]


@pytest.mark.parametrize("name, fn", FLOAT32_CASES, ids=[c[0] for c in FLOAT32_CASES])
def test_float32_stays_float32(name, fn, rng, dtype_probe):
    x = Tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 3)).astype(np.float32), requires_grad=True)
    out = fn(dtype_probe.apply(x if name != "attention" else x[None, :3]), dtype_probe.apply(w))
    assert out.dtype == np.float32
    out.sum().backward()
    assert dtype_probe.seen and all(d == np.float32 for d in dtype_probe.seen), dtype_probe.seen
    for t in (x, w):
        assert t.grad is None or t.grad.dtype == np.float32
