"""Shared fixtures: a seeded generator, PyTorch when installed, and the two checks every
operation goes through (a float64 gradient check and a value-and-gradient match with PyTorch).

A *case* is a function ``case(L, *xs)`` written once against a small namespace ``L`` of
operations, so the very same expression runs on tinymlm (``L = ours``) and on PyTorch
(``L = torch_lib``). Constant arguments (masks, indices, targets) are NumPy arrays captured by
the case; the PyTorch namespace converts them.
"""

from __future__ import annotations

import os

# The tests' matrices are tiny: one BLAS thread is faster than two fighting over 2 cores, and
# much faster when the machine is busy. Set before NumPy loads OpenBLAS; a user's value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math  # noqa: E402
from types import SimpleNamespace

import numpy as np
import pytest

from tinymlm import ops
from tinymlm.autograd import Function, Tensor
from tinymlm.gradcheck import gradcheck
from tinymlm.nn import functional as F

GRADCHECK_TOL = 1e-6  # issue 2: worst relative error of every operation's gradient in float64


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


class DtypeProbe(Function):
    """Identity that records the dtype of each gradient the following operations sent back.

    Leaves cast their ``.grad`` to their own dtype, so only a probe between a leaf and an
    operation sees whether that operation's backward silently upcast float32 to float64.
    """

    seen: list = []

    def forward(self, a):
        return a

    def backward(self, g):
        DtypeProbe.seen.append(g.dtype)
        return g


@pytest.fixture
def dtype_probe():
    DtypeProbe.seen = []
    yield DtypeProbe
    DtypeProbe.seen = []


# --- the two namespaces a case is written against ---------------------------------------------


def _dropout_mask(seed: int, shape, p: float) -> np.ndarray:
    """The scaled keep-mask tinymlm's dropout draws from ``default_rng(seed)`` (a reference)."""
    keep = np.random.default_rng(seed).random(shape, dtype=np.float32) >= p
    return keep / (1.0 - p)


def _ours():
    def sdpa(q, k, v, mask=None, dropout_p=0.0, seed=0):
        generator = np.random.default_rng(seed) if dropout_p > 0 else None
        return F.scaled_dot_product_attention(
            q, k, v, mask, dropout_p=dropout_p, generator=generator
        )

    return SimpleNamespace(
        exp=ops.exp,
        log=ops.log,
        sqrt=ops.sqrt,
        tanh=ops.tanh,
        where=ops.where,
        masked_fill=ops.masked_fill,
        matmul=ops.matmul,
        sum=lambda x, axis=None, keepdims=False: x.sum(axis, keepdims),
        mean=lambda x, axis=None, keepdims=False: x.mean(axis, keepdims),
        max=lambda x, axis=None, keepdims=False: x.max(axis, keepdims),
        reshape=lambda x, *shape: x.reshape(*shape),
        permute=lambda x, *dims: x.permute(*dims),
        gather=lambda x, axis, index: ops.gather(x, axis, index),
        concatenate=lambda xs, axis=0: ops.concatenate(xs, axis),
        stack=lambda xs, axis=0: ops.stack(xs, axis),
        softmax=lambda x, axis=-1: F.softmax(x, axis=axis),
        log_softmax=lambda x, axis=-1: F.log_softmax(x, axis=axis),
        gelu=F.gelu,
        layer_norm=F.layer_norm,
        dropout=lambda x, p, seed: F.dropout(x, p, generator=np.random.default_rng(seed)),
        embedding=F.embedding,
        linear=F.linear,
        cross_entropy=F.cross_entropy,
        sdpa=sdpa,
    )


ours_lib = _ours()


def _torch_lib(torch):
    tf = torch.nn.functional

    def as_t(a):
        return a if isinstance(a, torch.Tensor) else torch.as_tensor(a)

    def dims(x, axis):
        if axis is None:
            return tuple(range(x.ndim))
        return axis

    def sdpa(q, k, v, mask=None, dropout_p=0.0, seed=0):
        # Hugging Face's way: scores + (1 − m)·finfo.min, softmax, (dropout), @ v.
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, S, S)
        if mask is not None:
            m = as_t(mask).to(q.dtype)[:, None, None, :]  # (B, 1, 1, S)
            scores = scores + (1.0 - m) * torch.finfo(q.dtype).min
        p = torch.softmax(scores, dim=-1)
        if dropout_p > 0:
            p = p * as_t(_dropout_mask(seed, tuple(p.shape), dropout_p)).to(q.dtype)
        return p @ v

    return SimpleNamespace(
        exp=torch.exp,
        log=torch.log,
        sqrt=torch.sqrt,
        tanh=torch.tanh,
        where=lambda c, a, b: torch.where(as_t(c), a, b),
        masked_fill=lambda a, m, value: a.masked_fill(as_t(m), value),
        matmul=torch.matmul,
        sum=lambda x, axis=None, keepdims=False: x.sum(dim=dims(x, axis), keepdim=keepdims),
        mean=lambda x, axis=None, keepdims=False: x.mean(dim=dims(x, axis), keepdim=keepdims),
        max=lambda x, axis=None, keepdims=False: x.amax(dim=dims(x, axis), keepdim=keepdims),
        reshape=lambda x, *shape: x.reshape(*shape),
        permute=lambda x, *d: x.permute(*d),
        gather=lambda x, axis, index: torch.gather(x, axis, as_t(index)),
        concatenate=lambda xs, axis=0: torch.cat(xs, dim=axis),
        stack=lambda xs, axis=0: torch.stack(xs, dim=axis),
        softmax=lambda x, axis=-1: torch.softmax(x, dim=axis),
        log_softmax=lambda x, axis=-1: torch.log_softmax(x, dim=axis),
        gelu=lambda x: tf.gelu(x, approximate="none"),
        layer_norm=lambda x, shape, w=None, b=None, eps=1e-5: tf.layer_norm(
            x, (shape,) if isinstance(shape, int) else shape, w, b, eps
        ),
        dropout=lambda x, p, seed: x * as_t(_dropout_mask(seed, tuple(x.shape), p)).to(x.dtype),
        embedding=lambda ids, w: tf.embedding(as_t(ids), w),
        linear=tf.linear,
        cross_entropy=lambda x, t: tf.cross_entropy(x, as_t(t), ignore_index=-100),
        sdpa=sdpa,
    )


# --- the checks -------------------------------------------------------------------------------


def _make_arrays(rng, specs, dtype=np.float64) -> list[np.ndarray]:
    """One array per spec: a shape (standard normal) or ("pos", shape) (in [0.5, 2])."""
    arrays = []
    for spec in specs:
        if spec and spec[0] == "pos":
            arrays.append(rng.uniform(0.5, 2.0, size=spec[1]).astype(dtype))
        else:
            arrays.append(rng.standard_normal(spec).astype(dtype))
    return arrays


@pytest.fixture
def make_arrays():
    return _make_arrays


@pytest.fixture
def check_gradients():
    """Gradcheck ``case(ours, *tensors)`` in float64; fails with gradcheck's report."""

    def check(case, arrays):
        tensors = [Tensor(a.astype(np.float64), requires_grad=True) for a in arrays]
        result = gradcheck(lambda *ts: case(ours_lib, *ts), tensors)
        assert result.ok and result.max_error <= GRADCHECK_TOL, str(result)
        return result

    return check


def _outputs_and_grads(case, L, arrays, to_tensor, to_numpy, weights_seed=7):
    inputs = [to_tensor(a) for a in arrays]
    out = case(L, *inputs)
    weights = np.random.default_rng(weights_seed).standard_normal(tuple(out.shape))
    (out * to_tensor(weights, grad=False)).sum().backward()
    return to_numpy(out), [to_numpy(t.grad) for t in inputs]


@pytest.fixture
def compare_with_torch(torch):
    """Run ``case`` on tinymlm and on PyTorch in float64; values and gradients must agree.

    The loss is Σ out ∘ w with one fixed random w, so every output element's gradient path is
    exercised. ``atol`` is for elements whose true value is 0 (or cancels to ~1e-17), where a
    relative tolerance means nothing.
    """
    torch_lib = _torch_lib(torch)

    def ours_tensor(a, grad=True):
        return Tensor(a, requires_grad=grad)

    def torch_tensor(a, grad=True):
        return torch.tensor(a, dtype=torch.float64, requires_grad=grad)

    def compare(case, arrays, rtol=1e-10, atol=1e-12):
        arrays = [a.astype(np.float64) for a in arrays]
        ours_out, ours_grads = _outputs_and_grads(
            case, ours_lib, arrays, ours_tensor, lambda t: np.asarray(getattr(t, "data", t))
        )
        torch_out, torch_grads = _outputs_and_grads(
            case, torch_lib, arrays, torch_tensor, lambda t: t.detach().numpy()
        )
        np.testing.assert_allclose(ours_out, torch_out, rtol=rtol, atol=atol, err_msg="value")
        for i, (g, tg) in enumerate(zip(ours_grads, torch_grads, strict=True)):
            np.testing.assert_allclose(g, tg, rtol=rtol, atol=atol, err_msg=f"grad of input {i}")

    return compare
