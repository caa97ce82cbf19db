"""Every Tensor operation: float64 gradcheck, PyTorch parity, exact zeros where masked, dtypes.

Each case is written once against a namespace ``L`` (tinymlm or PyTorch, see conftest.py), so
the gradient check and the PyTorch comparison run the very same expression.
"""

from __future__ import annotations

import numpy as np
import pytest

from tinymlm import ops
from tinymlm.autograd import Tensor

MASK_23 = np.array([[True, False, True], [False, False, True]])  # (2, 3)
COND_3 = np.array([True, False, True])  # (3,) broadcast against (2, 3)

# (id, case(L, *xs), input specs): a spec is a shape, or ("pos", shape) for positive inputs.
CASES = [
    # elementwise arithmetic, with broadcasting of operands
    ("add", lambda L, a, b: a + b, [(2, 3), (2, 3)]),
    ("add_broadcast", lambda L, a, b: a + b, [(2, 1, 3), (4, 1)]),
    ("add_scalar", lambda L, a: 2.5 + a + 1.5, [(2, 3)]),
    ("sub_broadcast", lambda L, a, b: a - b, [(2, 3), (1, 3)]),
    ("rsub_scalar", lambda L, a: 1.0 - a, [(2, 3)]),
    ("mul_broadcast", lambda L, a, b: a * b, [(3, 1), (1, 4)]),
    ("div", lambda L, a, b: a / b, [(2, 3), ("pos", (2, 3))]),
    ("div_broadcast", lambda L, a, b: a / b, [(2, 3), ("pos", (3,))]),
    ("rdiv_scalar", lambda L, a: 2.0 / a, [("pos", (2, 3))]),
    ("neg", lambda L, a: -a, [(2, 3)]),
    ("pow_int", lambda L, a: a**3, [(2, 3)]),
    ("pow_float", lambda L, a: a**0.5 + a**-1.5, [("pos", (2, 3))]),
    ("pow_tensor", lambda L, a, b: a**b, [("pos", (2, 3)), (3,)]),
    ("rpow_scalar", lambda L, a: 2.0**a, [(2, 3)]),
    ("exp", lambda L, a: L.exp(a), [(2, 3)]),
    ("log", lambda L, a: L.log(a), [("pos", (2, 3))]),
    ("sqrt", lambda L, a: L.sqrt(a), [("pos", (2, 3))]),
    ("tanh", lambda L, a: L.tanh(a), [(2, 3)]),
    # selection: no gradient through the mask
    ("where", lambda L, a, b: L.where(MASK_23, a, b), [(2, 3), (2, 3)]),
    ("where_broadcast", lambda L, a, b: L.where(COND_3, a, b), [(2, 3), (1,)]),
    ("masked_fill", lambda L, a: L.masked_fill(a, MASK_23, -3.0), [(2, 3)]),
    # matrix products, with batch broadcasting
    ("matmul_2d", lambda L, a, b: a @ b, [(3, 4), (4, 2)]),
    ("matmul_batched", lambda L, a, b: L.matmul(a, b), [(2, 3, 4), (2, 4, 2)]),
    ("matmul_batch_broadcast", lambda L, a, b: a @ b, [(2, 1, 3, 4), (3, 4, 2)]),
    ("matmul_shared_rhs", lambda L, a, b: a @ b, [(2, 3, 4), (4, 2)]),
    # reductions
    ("sum_all", lambda L, a: L.sum(a), [(2, 3, 2)]),
    ("sum_axis", lambda L, a: L.sum(a, 1), [(2, 3, 2)]),
    ("sum_neg_axis_keepdims", lambda L, a: L.sum(a, -1, True), [(2, 3, 2)]),
    ("sum_tuple", lambda L, a: L.sum(a, (0, 2)), [(2, 3, 2)]),
    ("sum_tuple_keepdims", lambda L, a: L.sum(a, (0, 2), True), [(2, 3, 2)]),
    ("mean_all", lambda L, a: L.mean(a), [(2, 3, 2)]),
    ("mean_axis", lambda L, a: L.mean(a, 0), [(2, 3, 2)]),
    ("mean_tuple_keepdims", lambda L, a: L.mean(a, (1, 2), True), [(2, 3, 2)]),
    ("max_all", lambda L, a: L.max(a), [(2, 3, 2)]),
    ("max_axis", lambda L, a: L.max(a, 1), [(2, 3, 2)]),
    ("max_tuple_keepdims", lambda L, a: L.max(a, (0, -1), True), [(2, 3, 2)]),
    # shapes
    ("reshape", lambda L, a: L.reshape(a, 3, 4) * 1.0, [(2, 6)]),
    ("reshape_tuple_infer", lambda L, a: a.reshape((-1, 2)), [(2, 3, 2)]),
    ("transpose", lambda L, a: a.transpose(0, 2), [(2, 3, 4)]),
    ("permute", lambda L, a: L.permute(a, 2, 0, 1), [(2, 3, 4)]),
    ("T", lambda L, a: a.T, [(2, 3)]),
    # indexing: basic slices and fancy indices with repeats
    ("slice", lambda L, a: a[1:, ::2], [(3, 5)]),
    ("slice_ellipsis_newaxis", lambda L, a: a[..., None, 1], [(2, 3, 4)]),
    ("int_index", lambda L, a: a[1], [(3, 4)]),
    ("fancy_repeats", lambda L, a: a[[0, 2, 0, 0]], [(3, 4)]),
    ("fancy_pairs_repeats", lambda L, a: a[[0, 1, 1], :, [2, 0, 2]], [(2, 3, 4)]),
    ("fancy_mixed_slice", lambda L, a: a[1:, [3, 3, 0]], [(3, 4)]),
    ("gather_last", lambda L, a: L.gather(a, 1, np.array([[0, 0, 3], [2, 1, 2]])), [(2, 4)]),
    (
        "gather_first",
        lambda L, a: L.gather(a, 0, np.array([[[1, 0], [1, 1]], [[0, 0], [1, 0]]])),
        [(2, 2, 2)],
    ),
    ("concatenate", lambda L, a, b: L.concatenate([a, b, a], 1), [(2, 1), (2, 3)]),
    ("concatenate_axis0", lambda L, a, b: L.concatenate([a, b]), [(1, 3), (2, 3)]),
    ("stack", lambda L, a, b: L.stack([a, b, a]), [(2, 3), (2, 3)]),
    ("stack_last", lambda L, a, b: L.stack([a, b], -1), [(2, 3), (2, 3)]),
    # graph shapes: fan-out, reused intermediates (diamonds), long expressions
    ("fan_out", lambda L, a: a * a + a - a / (a * a + 1.0), [(2, 3)]),
    (
        "diamond",
        lambda L, a, b: (lambda h: (L.tanh(h) * h) @ b + L.exp(-h) @ b)(a @ b.T),
        [(2, 3), (2, 3)],
    ),
    (
        "reused_chain",
        lambda L, a: (lambda h: (lambda k: k * h + L.sum(k, 1, True))(h * h))(L.tanh(a)),
        [(3, 2)],
    ),
]

# Cases PyTorch cannot express (it has no negative slice steps): gradcheck only.
NUMPY_ONLY_CASES = [
    ("negative_step", lambda L, a: a[::-1, 1:3], [(3, 4)]),
]

CASE_IDS = [c[0] for c in CASES]


@pytest.mark.parametrize(
    "name, case, specs", CASES + NUMPY_ONLY_CASES, ids=CASE_IDS + ["negative_step"]
)
def test_gradcheck(name, case, specs, rng, make_arrays, check_gradients):
    check_gradients(case, make_arrays(rng, specs))


@pytest.mark.parametrize("name, case, specs", CASES, ids=CASE_IDS)
def test_matches_torch(name, case, specs, rng, make_arrays, compare_with_torch):
    compare_with_torch(case, make_arrays(rng, specs))


def test_max_ties_share_the_gradient_like_torch_amax(compare_with_torch):
    a = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])  # ties in every row and overall
    compare_with_torch(lambda L, x: L.max(x, 1), [a])
    compare_with_torch(lambda L, x: L.max(x), [a])


def test_masked_positions_get_exactly_zero_gradient(rng):
    a = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    b = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    (ops.masked_fill(a, MASK_23, 5.0) * 3.0).sum().backward()
    assert np.all(a.grad[MASK_23] == 0.0)
    np.testing.assert_array_equal(a.grad[~MASK_23], 3.0)

    a.grad = None
    (ops.where(MASK_23, a, b) * 2.0).sum().backward()
    np.testing.assert_array_equal(a.grad, np.where(MASK_23, 2.0, 0.0))
    np.testing.assert_array_equal(b.grad, np.where(MASK_23, 0.0, 2.0))


def test_mask_tensor_gets_no_gradient(rng):
    a = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
    mask = a > 0.0
    assert mask.dtype == np.bool_ and not mask.requires_grad
    ops.masked_fill(a, mask, 0.0).sum().backward()
    np.testing.assert_array_equal(a.grad, (a.data <= 0).astype(np.float64))


def test_comparisons_match_numpy(rng):
    x = rng.standard_normal(5)
    t = Tensor(x)
    np.testing.assert_array_equal((t < 0.1).data, x < 0.1)
    np.testing.assert_array_equal((t <= 0.1).data, x <= 0.1)
    np.testing.assert_array_equal((t > 0.1).data, x > 0.1)
    np.testing.assert_array_equal((t >= 0.1).data, x >= 0.1)
    np.testing.assert_array_equal(t.eq(Tensor(x)).data, np.ones(5, bool))


def test_fancy_index_repeats_add_up():
    a = Tensor(np.zeros((3, 2)), requires_grad=True)
    a[[0, 2, 0, 0]].sum().backward()
    np.testing.assert_array_equal(a.grad, [[3.0, 3.0], [0.0, 0.0], [1.0, 1.0]])


def test_gather_matches_take_along_axis(rng):
    a = rng.standard_normal((3, 4))
    index = np.array([[0, 3], [1, 1], [2, 0]])
    np.testing.assert_array_equal(
        ops.gather(Tensor(a), 1, index).data, np.take_along_axis(a, index, 1)
    )


# --- float32 stays float32, forward and backward -------------------------------------------------


FLOAT32_CASES = [
    ("add", lambda a, b: a + b + 1.5),
    ("sub", lambda a, b: 1.5 - a - b),
    ("mul", lambda a, b: 0.5 * a * b),
    ("div", lambda a, b: 1.5 / (a * a + 1.0) / (b * b + 2.0)),
    ("neg", lambda a, b: -a),
    ("pow_scalar", lambda a, b: (a * a + 1.0) ** 0.5 + a**2),
    ("pow_tensor", lambda a, b: (a * a + 1.0) ** b),
    ("rpow", lambda a, b: 2.0**a),
    (
        "exp_log_sqrt_tanh",
        lambda a, b: ops.log(ops.exp(a) + 1.0) + ops.sqrt(b * b + 1.0) + a.tanh(),
    ),
    ("where", lambda a, b: ops.where(MASK_23, a, b)),
    ("masked_fill", lambda a, b: a.masked_fill(MASK_23, -1e9)),
    ("matmul", lambda a, b: a @ b.T),
    ("sum_mean_max", lambda a, b: a.sum(1) + b.mean(0, keepdims=True).sum() + a.max(axis=(0, 1))),
    ("shapes", lambda a, b: a.reshape(3, 2).T.permute(1, 0) + b.transpose(0, 1).reshape(3, 2)),
    ("index", lambda a, b: a[1:, [0, 0, 2]] + b[0]),
    ("gather", lambda a, b: ops.gather(a, 1, np.array([[0, 2], [1, 1]]))),
    ("concat_stack", lambda a, b: ops.concatenate([a, b], 1).sum() + ops.stack([a, b]).sum()),
]


@pytest.mark.parametrize("name, fn", FLOAT32_CASES, ids=[c[0] for c in FLOAT32_CASES])
def test_float32_stays_float32(name, fn, rng, dtype_probe):
    a = Tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    out = fn(dtype_probe.apply(a), dtype_probe.apply(b))
    assert out.dtype == np.float32
    out.sum().backward()
    assert dtype_probe.seen, "no gradient reached the inputs"
    assert all(d == np.float32 for d in dtype_probe.seen), dtype_probe.seen
    for t in (a, b):
        assert t.grad is None or t.grad.dtype == np.float32
