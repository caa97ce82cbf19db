"""The fused softmax + cross-entropy kernels: CPU kernel, CUDA kernels (simulator, PTX)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import ptx as ptx_tools
from tinymlm import Tensor
from tinymlm.kernels import cross_entropy as ce

IGNORE = -100
ROOT = Path(__file__).resolve().parents[1]


def make_logits(rng, M, V, dtype):
    """Random logits with a large outlier per row, so the softmax is far from uniform."""
    logits = rng.standard_normal((M, V)).astype(dtype)  # (M, V)
    if M:
        logits[np.arange(M), rng.integers(0, V, M)] += dtype(25.0)
    return logits


def reference(logits, targets, scale):
    """Float64 per-row loss, log-sum-exp, and gradient (softmax - onehot) * scale."""
    x = logits.astype(np.float64)  # (M, V)
    m = x.max(axis=1, keepdims=True)  # (M, 1)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]  # (M,)
    valid = targets != IGNORE
    rows, t = np.arange(len(targets)), np.where(valid, targets, 0)
    loss = np.where(valid, lse - x[rows, t], 0.0)  # (M,)
    grad = np.exp(x - lse[:, None])  # (M, V)
    grad[rows, t] -= 1.0
    grad *= np.where(valid, scale, 0.0)[:, None]
    return loss, lse, grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, V, threaded", [(7, 1, False), (9, 37, False), (33, 1001, False),
                                            (33, 1001, True)])  # fmt: skip
def test_cpu_kernels_match_the_reference(dtype, M, V, threaded, monkeypatch):
    if threaded:  # the prange versions, which real sizes use
        monkeypatch.setattr(ce, "PARALLEL_MIN_ELEMENTS", 0)
    rng = np.random.default_rng(M * V)
    logits = make_logits(rng, M, V, dtype)
    targets = rng.integers(0, V, M)
    targets[::3] = IGNORE
    want_loss, want_lse, want_grad = reference(logits, targets, 0.25)
    loss, lse = ce.cpu_forward(logits, targets)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    assert loss.dtype == lse.dtype == dtype
    np.testing.assert_allclose(loss, want_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(lse, want_lse, rtol=tol, atol=tol)
    out = np.full_like(logits, np.nan)  # poisoned: an unwritten element fails
    grad = ce.cpu_backward(logits, targets, lse, 0.25, out=out)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol)
    in_place = ce.cpu_backward(logits, targets, lse, 0.25, out=logits)
    assert in_place is logits and logits.dtype == dtype
    np.testing.assert_allclose(in_place, want_grad, rtol=tol, atol=tol)


def test_masked_classes_and_huge_logits_stay_finite():
    logits = np.array([[-np.inf, 0.0, 1e4, -1e4], [3.0, -np.inf, -np.inf, 2.0]], np.float32)
    targets = np.array([2, 3])
    loss, _ = ce.cpu_forward(logits, targets)
    want_loss, _, _ = reference(logits, targets, 1.0)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_function_loss_and_gradient(dtype):
    rng = np.random.default_rng(1)
    M, V = 12, 50
    data = make_logits(rng, M, V, dtype)
    targets = rng.integers(0, V, M)
    targets[[2, 5]] = IGNORE
    want_loss, _, want_grad = reference(data, targets, 1.0 / (M - 2))

    leaf = Tensor(data.copy(), requires_grad=True)
    loss = ce.FusedCrossEntropy.apply(leaf, targets, ignore_index=IGNORE)
    assert loss.shape == () and loss.dtype == dtype
    tol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss.data, want_loss.sum() / (M - 2), rtol=tol)
    (loss * 3.0).backward()  # an incoming gradient other than 1
    np.testing.assert_allclose(leaf.grad, 3.0 * want_grad, rtol=tol, atol=tol)
    np.testing.assert_array_equal(leaf.data, data)  # a leaf's data is never overwritten


def test_the_linear_loss_gives_the_linear_then_loss_gradients():
    """FusedLinearCrossEntropy overwrites only its own logits: the layer's gradients are those
    of F.linear followed by the loss."""
    rng = np.random.default_rng(2)
    h = Tensor(rng.standard_normal((6, 8)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((20, 8)).astype(np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal(20).astype(np.float32), requires_grad=True)
    targets = rng.integers(0, 20, 6)
    targets[1] = IGNORE
    ce.FusedLinearCrossEntropy.apply(h, w, b, targets).backward()
    data = h.data @ w.data.T + b.data  # (M, V)
    _, _, want_grad = reference(data, targets, 1.0 / 5)
    np.testing.assert_allclose(h.grad, want_grad @ w.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.grad, want_grad.T @ h.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.grad, want_grad.sum(0), rtol=1e-5, atol=1e-6)


def test_other_intermediate_logits_are_left_alone():
    """An intermediate another Function may have saved must not be overwritten."""
    rng = np.random.default_rng(2)
    data = make_logits(rng, 6, 20, np.float64)
    targets = rng.integers(0, 20, 6)
    x = Tensor(data.copy(), requires_grad=True)
    logits = x * 1.0
    loss = ce.FusedCrossEntropy.apply(logits, targets) + (logits * logits).sum()
    loss.backward()
    _, _, want_grad = reference(data, targets, 1.0 / 6)
    np.testing.assert_array_equal(logits.data, data)
    np.testing.assert_allclose(x.grad, want_grad + 2 * data, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("M", [0, 4])
def test_no_counted_row_gives_exactly_zero(M):
    logits = Tensor(np.random.default_rng(3).standard_normal((M, 9)), requires_grad=True)
    loss = ce.FusedCrossEntropy.apply(logits, np.full(M, IGNORE))
    assert loss.data == 0.0 and np.isfinite(loss.data)
    loss.backward()
    np.testing.assert_array_equal(logits.grad, np.zeros((M, 9)))


def test_gradcheck_float64_central_differences():
    rng = np.random.default_rng(4)
    M, V = 5, 11
    data = make_logits(rng, M, V, np.float64)
    targets = np.array([1, IGNORE, 10, 0, 4])
    x = Tensor(data.copy(), requires_grad=True)
    ce.FusedCrossEntropy.apply(x, targets).backward()

    def loss_at(a):
        return float(ce.FusedCrossEntropy.apply(Tensor(a), targets).data)

    h = 1e-6
    numeric = np.empty_like(data)
    for index in np.ndindex(*data.shape):
        up, down = data.copy(), data.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (loss_at(up) - loss_at(down)) / (2 * h)
    np.testing.assert_allclose(x.grad, numeric, rtol=1e-6, atol=1e-9)


def test_matches_torch_cross_entropy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    data = make_logits(rng, 16, 30, np.float64)
    targets = rng.integers(0, 30, 16)
    targets[:3] = IGNORE
    x = Tensor(data.copy(), requires_grad=True)
    loss = ce.FusedCrossEntropy.apply(x, targets)
    loss.backward()
    tx = torch.tensor(data, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tx, torch.tensor(targets), ignore_index=IGNORE)
    tloss.backward()
    np.testing.assert_allclose(loss.data, tloss.item(), rtol=1e-13)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_bad_input_raises_clear_errors():
    logits = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="targets must be in"):
        ce.cpu_forward(logits, np.array([0, 5, 1]))
    with pytest.raises(ValueError, match=r"\(M,\)"):
        ce.cpu_forward(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="float32 or float64"):
        ce.cpu_forward(logits.astype(np.int32), np.array([0, 1, 2]))


def test_cuda_kernels_under_the_simulator():
    # NUMBA_ENABLE_CUDASIM must be set before numba is imported: a process of its own.
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT))
    script = ROOT / "tests" / "sim_cross_entropy.py"
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


# Every block size a kernel is launched with: the library's default, and the others the GPU
# check and the lab validate and time (1024 threads leave 64 registers per thread).
BLOCKS = (128, 256, 512, 1024)


def _specializations():
    from numba import float32, float64, int64, void

    for dtype, f in (("float32", float32), ("float64", float64)):
        for block in BLOCKS:
            for shuffles in (True, False):
                sig = void(f[:, ::1], int64[::1], int64, f[::1], f[::1])
                yield (
                    f"forward-{dtype}-{block}-shuffles={shuffles}",
                    dtype,
                    block,
                    sig,
                    (
                        lambda d=dtype, b=block, s=shuffles: ce.cuda_forward_kernel(
                            d, b, ce.ILP, s
                        )
                    ),
                )
            sig = void(f[:, ::1], int64[::1], int64, f[::1], f[::1], f[:, ::1])
            yield (
                f"backward-{dtype}-{block}",
                dtype,
                block,
                sig,
                (lambda d=dtype, b=block: ce.cuda_backward_kernel(d, b)),
            )


@pytest.mark.parametrize(
    "name, dtype, block, sig, make",
    list(_specializations()),
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_ptx_for_the_h100(name, dtype, block, sig, make):
    """The PTX the GPU would build (the kernel's own fastmath and launch bound): float32 stays
    float32, the bound is the block size, and ptxas fits ``block`` threads' registers in a
    block without spilling."""
    ptx = ptx_tools.compile_for(make(), sig)
    if dtype == "float32":
        assert not re.search(r"\.f64\b", ptx), "float64 arithmetic in a float32 kernel"
        assert "ex2.approx" in ptx  # fastmath exp
    assert ptx_tools.max_threads(ptx) == block
    ptx_tools.assert_fits(ptx_tools.ptxas_report(ptx), block, name)


def test_a_view_of_another_array_is_not_overwritten():
    rng = np.random.default_rng(6)
    data = make_logits(rng, 4, 10, np.float32)
    x = Tensor(data.copy(), requires_grad=True)
    view = x.reshape(4, 10)  # an intermediate whose buffer is x's
    ce.FusedCrossEntropy.apply(view, rng.integers(0, 10, 4)).backward()
    np.testing.assert_array_equal(x.data, data)
