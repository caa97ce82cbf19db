r"""Fused masked softmax + cross-entropy: Numba kernels for the CPU and the GPU.

For M rows of logits :math:`x_i \in \mathbb{R}^V` with targets :math:`t_i` (``ignore_index``
marks a row that is not predicted) and :math:`N = \#\{i : t_i \ne \text{ignore}\}`:

.. math::

    L_i = \log \sum_j e^{x_{ij}} = m_i + \log \sum_j e^{x_{ij} - m_i}, \quad
    m_i = \max_j x_{ij}, \qquad
    \ell = \frac{1}{N} \sum_{i:\,t_i \ne \text{ignore}} (L_i - x_{i t_i}),

.. math::

    \frac{\partial \ell}{\partial x_{ij}} =
    \frac{g}{N}\,\bigl(e^{x_{ij} - L_i} - [j = t_i]\bigr)
    \quad (\text{zero for ignored rows; } g = \text{the incoming gradient}).

``ℓ`` is exactly 0, with a zero gradient, when N = 0.

The plain path materialises log-probabilities and probabilities, each an M x V array, and
walks them several times. Here the logits are streamed:

* forward, one read of each row: the maximum m and the sum s of e^{x - m} (on the GPU an
  *online softmax*: a running maximum, and when a new maximum m' arrives the sum so far is
  rescaled by e^{m - m'}); only L_i and the per-row losses (M floats each) are written;
* backward, one read and one write of each row: e^{x - L} - onehot, times g/N, written into
  the gradient buffer, which may be the logits themselves when nothing else can read them
  (:class:`FusedLinearCrossEntropy`).

No M x V temporary is allocated besides the gradient, so the rows need no splitting into
chunks: any M whose logits fit in memory fits here.

GPU (``cross_entropy_kernels``): one block per row. Each
thread folds its strided slice of the row into its own (m, s), ``ILP`` loads in flight at a
time; the block then merges the pairs with warp shuffles and one shared-memory step (a
shared-memory tree under Numba's CUDA simulator, which has no shuffles). The backward grid
walks the rows in reverse: the last rows the forward pass read are the ones most likely still
in L2. Variants and timings: ``kernels/cross_entropy.py`` (the lab).

CPU (:func:`cpu_forward`, :func:`cpu_backward`): the same passes with ``numba.njit``; the row
(120 KB at V = 30522) stays in cache between the max and the sum sweeps. Rows are spread over
threads (``prange``) when the call is large enough to pay for it; e^x is computed in plain
float32 arithmetic the compiler vectorises (``cpu_math.kernel_exp``). That this beats the
NumPy path at every size is measured by ``benchmarks/bench_cross_entropy_cpu.py``; the
dispatch table in ``tinymlm.kernels`` records it.
"""

from __future__ import annotations

import math
import types as pytypes

import numpy as np
from numba import njit, prange

from tinymlm import backend, ops
from tinymlm.autograd import Function
from tinymlm.kernels.cpu_math import PARALLEL_MIN_ELEMENTS, kernel_exp
from tinymlm.kernels.cross_entropy_kernels import (  # noqa: F401  (used here by the lab, tests)
    DEFAULT_BLOCK,
    ILP,
    cuda_backward_kernel,
    cuda_forward_kernel,
)
from tinymlm.kernels.launch import array_module, launch

# ---------------------------------------------------------------------------------------------
# CPU: numba.njit, parallel over rows. Compiled on first call, then cached on disk.
# ---------------------------------------------------------------------------------------------


@njit(fastmath=True)
def _row_max(row):
    """max(row) with eight independent running maxima.

    A single running maximum is a chain of dependent comparisons the compiler does not turn
    into SIMD code (one element per ~2 cycles); eight chains run side by side, 4x faster.
    """
    V = row.size
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = row[0]
    n = V - V % 8
    for j in range(0, n, 8):
        a0 = max(a0, row[j])
        a1 = max(a1, row[j + 1])
        a2 = max(a2, row[j + 2])
        a3 = max(a3, row[j + 3])
        a4 = max(a4, row[j + 4])
        a5 = max(a5, row[j + 5])
        a6 = max(a6, row[j + 6])
        a7 = max(a7, row[j + 7])
    for j in range(n, V):
        a0 = max(a0, row[j])
    return max(max(max(a0, a1), max(a2, a3)), max(max(a4, a5), max(a6, a7)))


def _forward_rows(logits, targets, ignore_index, loss, lse):
    M, V = logits.shape
    for i in prange(M):
        row = logits[i]  # (V,)
        m = _row_max(row)
        s = kernel_exp(row[0] - m)  # the logits' dtype; fastmath lets the sum run in SIMD lanes
        for j in range(1, V):
            s += kernel_exp(row[j] - m)
        lse[i] = m + math.log(s)
        t = targets[i]
        loss[i] = 0.0 if t == ignore_index else lse[i] - row[t]


def _backward_rows_in_place(grad, targets, ignore_index, lse, scale):
    # One array read and written at the same index: the compiler can prove the loop safe to
    # vectorise. (With separate input and output arrays that might overlap, it falls back to
    # scalar code when they do, which made the in-place call ten times slower.)
    M, V = grad.shape
    for i in prange(M):
        t = targets[i]
        if t == ignore_index:
            grad[i, :] = 0.0
            continue
        row = grad[i]  # (V,) the logits on entry, the gradient on exit
        c = lse[i]
        for j in range(V):
            row[j] = kernel_exp(row[j] - c) * scale
        row[t] -= scale


def _compile(fn, parallel: bool):
    """``njit`` one of the row loops above, threaded over rows (``prange``) or not.

    Both versions are cached on disk; the copy gets its own name so the two caches differ.
    """
    if not parallel:
        fn = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial")
        fn.__qualname__ = fn.__name__
    return njit(parallel=parallel, fastmath=True, cache=True)(fn)


_cpu_forward = {p: _compile(_forward_rows, p) for p in (False, True)}
_cpu_backward_in_place = {p: _compile(_backward_rows_in_place, p) for p in (False, True)}


def _threaded(logits) -> bool:
    return logits.size >= PARALLEL_MIN_ELEMENTS


def _check(logits, targets, ignore_index: int):
    if logits.ndim != 2 or logits.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"logits must be a float32 or float64 (M, V) array, got {logits.dtype} {logits.shape}"
        )
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must be (M,) = ({logits.shape[0]},), got {targets.shape}")
    if logits.shape[0] and logits.shape[1] == 0:
        raise ValueError("logits have V = 0 classes: a softmax needs at least one")


def _check_targets_cpu(targets, V: int, ignore_index: int) -> None:
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    if bad.any():
        raise ValueError(
            f"targets must be in [0, {V}) or equal ignore_index={ignore_index}; got "
            f"{targets[bad][:5].tolist()}"
        )


def cpu_forward(logits: np.ndarray, targets: np.ndarray, ignore_index: int = -100):
    """Per-row losses (M,) and log-sum-exps (M,) of NumPy logits, in the logits' dtype."""
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    _check(logits, targets, ignore_index)
    _check_targets_cpu(targets, logits.shape[1], ignore_index)
    logits = np.ascontiguousarray(logits)
    loss = np.empty(logits.shape[0], logits.dtype)
    lse = np.empty(logits.shape[0], logits.dtype)
    if logits.shape[0]:
        _cpu_forward[_threaded(logits)](logits, targets, np.int64(ignore_index), loss, lse)
    return loss, lse


def cpu_backward(logits, targets, lse, scale, ignore_index: int = -100, out=None):
    """(e^{x - L} - onehot) * scale for every row (0 for ignored rows), written into ``out``.

    ``out`` may be ``logits`` itself (the in-place gradient); ``None`` allocates a new array.
    """
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    if out is None:
        out = logits.copy()
    elif out is not logits:
        np.copyto(out, logits)
    if logits.shape[0]:
        kernel = _cpu_backward_in_place[_threaded(out)]
        kernel(out, targets, np.int64(ignore_index), lse, out.dtype.type(scale))
    return out


# ---------------------------------------------------------------------------------------------
# GPU: launching the kernels of cross_entropy_kernels.py on CuPy arrays.
# ---------------------------------------------------------------------------------------------


def _device_module(a):
    """cupy for CuPy arrays; numpy only under the simulator (the tests' way in)."""
    return array_module(a, "the CUDA kernels take CuPy arrays; NumPy arrays go to cpu_forward")


def cuda_forward(logits, targets, ignore_index: int = -100, block: int = DEFAULT_BLOCK):
    """Per-row losses and log-sum-exps of CuPy logits (no device sync; a bad target -> NaN)."""
    xp = _device_module(logits)
    targets = xp.ascontiguousarray(xp.asarray(targets), dtype=np.int64)
    _check(logits, targets, ignore_index)
    logits = xp.ascontiguousarray(logits)
    M = logits.shape[0]
    loss = xp.empty(M, logits.dtype)
    lse = xp.empty(M, logits.dtype)
    kernel = cuda_forward_kernel(logits.dtype.name, block)
    launch(kernel, M, block, logits, targets, np.int64(ignore_index), loss, lse)
    return loss, lse


def cuda_backward(
    logits, targets, lse, scale, ignore_index: int = -100, out=None, block: int = DEFAULT_BLOCK
):
    """The gradient (e^{x - L} - onehot) * scale into ``out`` (may be ``logits``).

    ``scale`` is a device array of one element (or a scalar), so no value is read back.
    """
    xp = _device_module(logits)
    targets = xp.ascontiguousarray(xp.asarray(targets), dtype=np.int64)
    scale = xp.asarray(scale, dtype=logits.dtype).reshape(1)
    out = xp.empty_like(logits) if out is None else out
    kernel = cuda_backward_kernel(logits.dtype.name, block)
    launch(kernel, logits.shape[0], block, logits, targets, np.int64(ignore_index), lse, scale, out)
    return out


# ---------------------------------------------------------------------------------------------
# The autograd Function.
# ---------------------------------------------------------------------------------------------


# Under the CUDA simulator, tests set this to run the Functions' GPU branch on NumPy arrays.
SIMULATED_GPU = False


def _on_gpu(a) -> bool:
    return SIMULATED_GPU or not isinstance(a, np.ndarray)


def rows_forward(logits, targets, ignore_index: int):
    """Per-row losses (M,), log-sum-exps (M,) and the count N of predicted rows (at least 1,
    so that a batch with none gives 0 / 1 = 0), on the kernels of the logits' device."""
    if _on_gpu(logits):
        xp = _device_module(logits)
        loss, lse = cuda_forward(logits, targets, ignore_index)
    else:
        xp = np
        loss, lse = cpu_forward(logits, targets, ignore_index)
    count = xp.maximum((xp.asarray(targets) != ignore_index).sum(), 1)  # stays on the device
    return loss, lse, count


def rows_backward(logits, targets, lse, count, grad, ignore_index: int, out=None):
    """d(mean loss)/d logits = (e^{x - L} - onehot) * grad / N into ``out`` (None: a new array;
    it may be ``logits`` itself)."""
    if _on_gpu(logits):
        scale = grad.astype(logits.dtype) / count.astype(logits.dtype)  # no read-back to the host
        return cuda_backward(logits, targets, lse, scale, ignore_index, out=out)
    scale = float(grad) / float(count)
    return cpu_backward(logits, targets, lse, scale, ignore_index, out=out)


class FusedCrossEntropy(Function):
    """``tinymlm.nn.functional.CrossEntropy`` on the fused kernels: the mean cross-entropy over
    the rows whose target != ignore_index.

    ``FusedCrossEntropy.apply(logits (M, V), targets (M,), ignore_index=-100)`` -> 0-d Tensor.
    NumPy logits run the Numba CPU kernel, CuPy logits the CUDA kernel. The logits belong to
    whoever made them, so the gradient goes to a new array and the logits stay as they were.

    Targets outside [0, V) (other than ignore_index) raise a ValueError on the CPU; on the GPU
    they give a NaN loss instead (checking them would wait for the device).
    """

    def forward(self, logits, targets, *, ignore_index: int = -100):
        xp = backend.get_array_module(logits)
        logits, targets = xp.ascontiguousarray(logits), xp.asarray(targets)
        loss, lse, count = rows_forward(logits, targets, ignore_index)
        self.save_for_backward(logits, targets, lse, count)
        self.ignore_index = ignore_index
        return xp.asarray(loss.sum() / count, dtype=logits.dtype)  # 0-d

    def backward(self, grad):
        if not self.needs_input_grad[0]:
            return None, None
        logits, targets, lse, count = self.saved_tensors
        return rows_backward(logits, targets, lse, count, grad, self.ignore_index), None


class FusedLinearCrossEntropy(Function):
    """cross_entropy(x Wᵀ + b, targets): an output layer and its loss as one Function.

    ``apply(x (M, H), weight (V, H), bias (V,) or None, targets (M,), ignore_index=-100)``
    -> 0-d Tensor, the reference path's numbers (``F.linear`` then ``F.cross_entropy``).

    The reuse rule (see ``tinymlm.autograd.Function``): the (M, V) logits are made here, in a
    buffer this Function allocates and never returns, so nothing else can read it. Backward
    therefore writes G = d loss/d logits over it, row by row, and uses G for the layer's
    gradients: dx = G W, dW = Gᵀ x, db = Σ_rows G. The MLM head's loss needs no M x V
    gradient buffer of its own. Whoever also wants the logits asks ``F.linear`` for them.
    A second backward through the same graph (``retain_graph=True``) recomputes the logits.
    """

    def forward(self, x, weight, bias, targets, *, ignore_index: int = -100):
        xp = backend.get_array_module(x)
        targets = xp.asarray(targets)
        logits = self.logits(x, weight, bias)  # (M, V): ours alone
        loss, lse, count = rows_forward(logits, targets, ignore_index)
        self.save_for_backward(x, weight, bias, logits, targets, lse, count)
        self.ignore_index = ignore_index
        return xp.asarray(loss.sum() / count, dtype=logits.dtype)  # 0-d

    @staticmethod
    def logits(x, weight, bias):
        logits = x @ weight.T  # (M, V)
        if bias is not None:
            logits += bias
        return logits

    def backward(self, grad):
        x, weight, bias, logits, targets, lse, count = self.saved_tensors
        needs = self.needs_input_grad[:3]  # x, weight, bias
        if not any(needs):
            return None, None, None, None
        if logits is None:  # spent by an earlier backward
            logits = self.logits(x, weight, bias)
        g = rows_backward(logits, targets, lse, count, grad, self.ignore_index, out=logits)
        self.saved_tensors = (x, weight, bias, None, targets, lse, count)  # logits now hold g
        gx, gw, gb = ops.linear_grads(x, weight, g, needs)  # (M, H), (V, H), (V,)
        return gx, gw, gb, None
