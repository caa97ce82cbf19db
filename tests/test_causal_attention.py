"""The causal mask of ``F.scaled_dot_product_attention(..., is_causal=True)`` (issue 19).

The reference ``Attention`` is gradchecked in float64 and matches the textbook formula (one
mask: padding times the lower triangle); the fused CPU kernel gives the reference's numbers
and gradients (padding, a sequence with no real token, dropout, threaded or not) and reads no
key after its query (unless the row sees no real key); no output changes when a later token
changes, on either path.
The fused kernel's invisibility (second consumers, held tensors) is checked with the other
kernels in ``tests/test_fused_reuse.py``. The CUDA kernels' causal mask is checked under Numba's
CUDA simulator (``tests/sim_causal_attention.py``, in its own process) against float64.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinymlm.autograd import Tensor
from tinymlm.gradcheck import gradcheck
from tinymlm.kernels import cpu_fused, use_kernels
from tinymlm.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
B, HEADS, S, D = 3, 2, 6, 4


def padded_mask():
    mask = np.ones((B, S), dtype=np.int64)
    mask[0, 4:] = 0  # ragged
    mask[2] = 0  # a sequence with no real token
    return mask


def attend(mode, q, k, v, mask, dropout_p=0.0, g=None):
    """(output, [dq, dk, dv], the Function that ran) on the path ``mode``."""
    with use_kernels(mode):
        ts = [Tensor(a.copy(), requires_grad=True) for a in (q, k, v)]
        out = F.scaled_dot_product_attention(
            *ts, mask, dropout_p=dropout_p, generator=np.random.default_rng(3), is_causal=True
        )  # (B, h, S, d)
        if g is not None:
            (out * g).sum().backward()
        return out.data, [t.grad for t in ts], type(out._ctx).__name__


def textbook(q, k, v, mask):
    """softmax(q kᵀ/√d + (1 − mask · tril)·min) v, written out in NumPy."""
    allowed = mask[:, None, None, :] * np.tril(np.ones((S, S)))  # (B, 1, S, S)
    scores = q @ k.swapaxes(-1, -2) / np.sqrt(D) + (1 - allowed) * np.finfo(q.dtype).min
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True) @ v  # (B, h, S, d)


@pytest.fixture
def qkv(rng):
    return [rng.standard_normal((B, HEADS, S, D)) for _ in range(3)]


def test_reference_is_the_textbook_formula(qkv):
    out, _, ran = attend("reference", *qkv, padded_mask())
    assert ran == "Attention"
    np.testing.assert_allclose(out, textbook(*qkv, padded_mask()), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_reference_gradcheck(rng, dropout_p):
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])  # (2, 4)
    q, k, v = (Tensor(rng.standard_normal((2, 1, 4, 2)), requires_grad=True) for _ in range(3))

    def fn(q, k, v):
        with use_kernels("reference"):
            return F.scaled_dot_product_attention(
                q, k, v, mask, dropout_p=dropout_p, generator=np.random.default_rng(5),
                is_causal=True,
            )

    result = gradcheck(fn, [q, k, v])
    assert result.ok, result


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("threaded", [False, True])
def test_fused_equals_reference_with_every_gradient(qkv, rng, monkeypatch, dropout_p, threaded):
    monkeypatch.setattr(cpu_fused, "PARALLEL_MIN_ELEMENTS", 0 if threaded else 10**12)
    g = rng.standard_normal((B, HEADS, S, D))
    want, want_grads, _ = attend("reference", *qkv, padded_mask(), dropout_p, g)
    got, got_grads, ran = attend("numba", *qkv, padded_mask(), dropout_p, g)
    assert ran == "FusedAttention"
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    for ours, theirs in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["reference", "numba"])
def test_no_output_changes_when_a_later_token_changes(qkv, rng, mode):
    q, k, v = qkv
    mask = np.ones((B, S), dtype=np.int64)
    mask[0, 4:] = 0
    before, _, _ = attend(mode, q, k, v, mask)
    for t in range(S - 1):
        q2, k2, v2 = (a.copy() for a in (q, k, v))
        for a in (q2, k2, v2):  # every input of the positions after t
            a[:, :, t + 1:] = rng.standard_normal(a[:, :, t + 1:].shape) * 10
        after, _, _ = attend(mode, q2, k2, v2, mask)
        np.testing.assert_array_equal(after[:, :, : t + 1], before[:, :, : t + 1])
        assert not np.array_equal(after[:, :, t + 1:], before[:, :, t + 1:])


def test_fused_kernel_reads_only_the_keys_up_to_its_query():
    """Skipped, not zeroed: row i of the kernel loops over n_keys[b, i] keys, i + 1 under the
    causal mask; a row that sees no real key reads all S (the reference's uniform row)."""
    mask = padded_mask()
    n_keys = cpu_fused._keys_per_row(mask, B, S, is_causal=True)  # (B, S)
    np.testing.assert_array_equal(n_keys[:2], np.tile(np.arange(1, S + 1), (2, 1)))
    np.testing.assert_array_equal(n_keys[2], np.full(S, S))  # no real token at all
    left_padded = np.array([[0, 0, 1, 1, 1, 1]])  # keys 0..1 padding: rows 0 and 1 see none
    np.testing.assert_array_equal(cpu_fused._keys_per_row(left_padded, 1, S, True),
                                  [[S, S, 3, 4, 5, 6]])
    np.testing.assert_array_equal(cpu_fused._keys_per_row(None, 1, S, False), [[S] * S])


def test_left_padding_gives_the_reference_numbers(qkv):
    """Rows whose visible keys are all padding: the fused kernel reads every key, as masked."""
    mask = np.ones((B, S), dtype=np.int64)
    mask[:, :2] = 0
    want, _, _ = attend("reference", *qkv, mask)
    got, _, _ = attend("numba", *qkv, mask)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_without_the_flag_nothing_is_causal(qkv):
    """is_causal defaults to False: the encoder's attention still sees every key."""
    q, k, v = qkv
    with use_kernels("reference"):
        full = F.scaled_dot_product_attention(q, k, v).data
        causal = F.scaled_dot_product_attention(q, k, v, is_causal=True).data
    np.testing.assert_array_equal(full[:, :, -1], causal[:, :, -1])  # the last row sees all
    assert not np.allclose(full[:, :, 0], causal[:, :, 0])


def test_cuda_arrays_reach_the_cuda_kernel_with_the_causal_flag(qkv, monkeypatch):
    """The dispatch hands is_causal to the CUDA kernel's entry point (CuPy faked: the CPU
    arrays are declared CuPy's, the kernel is a spy that declines, so the reference runs)."""
    from tinymlm import backend
    from tinymlm.kernels import Selection

    class CupyLooking:  # the backend module, except that every array counts as CuPy's
        def __getattr__(self, name):
            return getattr(backend, name)

        @staticmethod
        def is_cupy_array(a):
            return True

    called = []

    def cuda_kernel(*args, **kwargs):
        called.append(kwargs["is_causal"])
        return None  # "can't take these inputs": the reference runs

    monkeypatch.setattr(F, "backend", CupyLooking())
    monkeypatch.setattr(F.kernels, "select", lambda op, *arrays: Selection(cuda_kernel, False))
    q, k, v = (Tensor(a, requires_grad=True) for a in qkv)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert type(out._ctx).__name__ == "Attention"
    F.scaled_dot_product_attention(q, k, v)
    assert called == [True, False]


# --- the CUDA kernels, under Numba's CUDA simulator ------------------------------------------


@pytest.fixture(scope="module")
def simulated():
    """tests/sim_causal_attention.py's results (its own process: the simulator must be chosen
    before Numba is imported)."""
    pytest.importorskip("numba.cuda")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "sim_causal_attention.py")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["tiled", "wide_keys", "production"])
def test_cuda_kernels_equal_the_float64_reference_under_the_simulator(simulated, case):
    result = simulated[case]
    for quantity in ("out", "lse", "dq", "dk", "dv"):
        r = result[quantity]
        assert r["nan"] == 0 and r["nonfinite_match"], (quantity, r)  # every element written
        assert r["max_abs_err"] <= 2e-6 * max(1.0, r["max_abs_ref"]), (quantity, r)  # float32
    assert result["earlier_rows_unchanged"]


def test_cuda_dispatch_equals_the_reference_function_under_the_simulator(simulated):
    result = simulated["dispatch"]
    assert result["ran"] == "FusedAttention"
    assert max(result["max_abs_err"].values()) <= 5e-6, result
    assert result["differs_from_non_causal"] > 0.1  # the flag did reach the kernels


# --- the causal CUDA kernels compiled for the H100 (PTX; no GPU needed) -----------------------


@pytest.mark.parametrize("head_dim", [32, 64])
@pytest.mark.parametrize("name", ["forward", "dkdv", "dq"])
def test_causal_cuda_kernels_compile_float32_without_spills(head_dim, name):
    """The causal variants are other specializations: float32 only, the launch bound, and
    (where a CUDA toolkit's ptxas is present) no register spills."""
    pytest.importorskip("numba.cuda")
    from numba import float32, int32

    from tests import ptx as ptx_tools
    from tinymlm.kernels import attention

    a4, a3 = float32[:, :, :, :], float32[:, :, :]  # any strides, as the layer passes them
    sizes = attention.tiles(head_dim)
    bq, bk = sizes["block_q"], sizes["block_k"]
    grads = (a4, a4, a4, a4, a3, a3, int32[:], float32, float32)
    kernel, signature = {
        "forward": (attention.forward_kernel(head_dim, bq, bk, True),
                    (a4, a4, a4, int32[:], float32, a4, a3)),
        "dkdv": (attention.dkdv_kernel(head_dim, bq, bk, True), (*grads, a4, a4)),
        "dq": (attention.dq_kernel(head_dim, bq, bk, True), (*grads, a4)),
    }[name]
    ptx = ptx_tools.compile_for(kernel, signature)
    assert not re.search(r"\.f64\b", ptx), "a float64 instruction"
    assert ptx_tools.max_threads(ptx) == bq  # the launch bound
    ptx_tools.assert_fits(ptx_tools.ptxas_report(ptx), bq, f"causal d={head_dim} {name}")
