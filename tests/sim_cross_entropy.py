"""Run the CUDA cross-entropy kernels under Numba's CUDA simulator (tiny shapes).

Started by tests/test_kernel_cross_entropy.py in its own process, because
NUMBA_ENABLE_CUDASIM=1 must be set before numba is first imported. Exits non-zero (with the
failing case on stderr) when a kernel disagrees with the float64 NumPy reference.
"""

import os
import sys

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402

from tinymlm.kernels import cross_entropy as ce  # noqa: E402

IGNORE = -100


def reference(logits, targets, scale):
    """Float64 per-row loss, log-sum-exp and gradient (softmax - onehot) * scale."""
    x = logits.astype(np.float64)  # (M, V)
    m = x.max(axis=1, keepdims=True)  # (M, 1)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]  # (M,)
    valid = targets != IGNORE
    rows = np.arange(len(targets))
    t = np.where(valid, targets, 0)
    loss = np.where(valid, lse - x[rows, t], 0.0)
    grad = np.exp(x - lse[:, None])
    grad[rows, t] -= 1.0
    grad *= np.where(valid, scale, 0.0)[:, None]
    return loss, lse, grad


def check(name, M, V, block, ilp, dtype, ignored, rng):
    logits = rng.standard_normal((M, V)).astype(dtype)
    if M and V > 3:  # outliers, so the softmax is far from uniform
        logits[rng.integers(0, M, M), rng.integers(0, V, M)] += dtype(30.0)
        logits[0, :3] = -np.inf if V > 8 else logits[0, :3]  # masked classes read as e^-inf = 0
    targets = rng.integers(0, V, M).astype(np.int64)
    targets[ignored] = IGNORE
    scale = 0.37
    want_loss, want_lse, want_grad = reference(logits, targets, scale)

    loss = np.full(M, np.nan, dtype)  # poisoned: an unwritten element fails
    lse = np.full(M, np.nan, dtype)
    forward = ce.cuda_forward_kernel(np.dtype(dtype).name, block, ilp, False)
    backward = ce.cuda_backward_kernel(np.dtype(dtype).name, block, True)
    if M:
        forward[M, block](logits, targets, np.int64(IGNORE), loss, lse)
    grad = logits.copy()  # in place, as in production
    if M:
        backward[M, block](grad, targets, np.int64(IGNORE), lse, np.array([scale], dtype), grad)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for what, got, want in (
        ("loss", loss, want_loss),
        ("lse", lse, want_lse),
        ("grad", grad, want_grad),
    ):
        if not np.allclose(got, want, rtol=tol, atol=tol):
            print(
                f"{name}: {what} differs (M={M}, V={V}, block={block}, ilp={ilp}, {dtype})\n"
                f"got {got}\nwant {want}",
                file=sys.stderr,
            )
            return False
    return True


def main() -> int:
    rng = np.random.default_rng(0)
    cases = [
        ("ragged", 5, 37, 32, 1, np.float32, [1]),
        ("ilp", 3, 131, 32, 4, np.float32, []),
        ("V<block", 2, 7, 32, 2, np.float32, [0]),
        ("all ignored", 3, 40, 32, 1, np.float32, [0, 1, 2]),
        ("M=0", 0, 37, 32, 1, np.float32, []),
        ("float64", 3, 45, 64, 2, np.float64, [2]),
    ]
    ok = all([check(*case, rng) for case in cases])
    # The public launchers (numpy arrays under the simulator), through the raw-array API.
    logits = rng.standard_normal((4, 50)).astype(np.float32)
    targets = np.array([3, IGNORE, 49, 0])
    loss, lse = ce.cuda_forward(logits, targets, block=32)
    want_loss, want_lse, want_grad = reference(logits, targets, 0.5)
    grad = ce.cuda_backward(logits, targets, lse, np.float32(0.5), out=logits, block=32)
    ok &= grad is logits and np.allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
    ok &= np.allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
