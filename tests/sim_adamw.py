"""Run the CUDA AdamW kernel under Numba's CUDA simulator against AdamW's reference path.

Started by tests/test_kernel_adamw.py in its own process (NUMBA_ENABLE_CUDASIM=1 must be set
before numba is first imported). Exits non-zero, with the failing case on stderr, when the
kernel's parameters or moments differ from ``tinymlm.optim.AdamW`` with ``kernels="reference"``
after a few steps, or when an element was never written (the kernel's outputs start as NaN
where the reference's do not: see ``poisoned``).
"""

import os
import sys

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402

from tinymlm import kernels  # noqa: E402
from tinymlm.kernels import adamw  # noqa: E402
from tinymlm.nn.module import Parameter  # noqa: E402
from tinymlm.optim import AdamW  # noqa: E402

HYPER = dict(lr=3e-3, betas=(0.9, 0.98), eps=1e-6)


def steps_both_ways(shape, dtype, weight_decay, steps, rng):
    """(reference p, m, v), (kernel p, m, v) after ``steps`` updates with the same gradients."""
    start = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(steps)]
    grads[0].flat[::3] = 0  # zero gradients: v stays 0 there, the update leans on eps

    reference = Parameter(start.copy())
    optimizer = AdamW([reference], weight_decay=weight_decay, **HYPER)
    with kernels.use_kernels("reference"):
        for g in grads:
            reference.grad = g.copy()
            optimizer.step()
    m_ref, v_ref = optimizer.state[id(reference)]

    p, m, v = start.copy(), np.zeros(shape, dtype), np.zeros(shape, dtype)
    beta1, beta2 = HYPER["betas"]
    for t, g in enumerate(grads, start=1):
        ok = adamw.adamw_step(
            p, g.copy(), m, v, lr=HYPER["lr"], beta1=beta1, beta2=beta2, eps=HYPER["eps"],
            weight_decay=weight_decay, step_size=HYPER["lr"] / (1 - beta1**t),
            correction2=float(np.sqrt(1 - beta2**t)),
        )  # fmt: skip
        assert ok, "the kernel declined contiguous arrays"
    return (reference.data, m_ref, v_ref), (p, m, v)


def poisoned(shape, dtype, rng):
    """An element the kernel does not write keeps its NaN; every one must be written."""
    p = np.full(shape, np.nan, dtype)
    m, v = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
    p[...] = 1
    m[...] = 0
    v[...] = 0
    g = rng.standard_normal(shape).astype(dtype)
    adamw.adamw_step(p, g, m, v, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                     step_size=1e-2, correction2=0.0316)  # fmt: skip
    return bool(np.isfinite(p).all() and (p != 1).all())


def main() -> int:
    rng = np.random.default_rng(0)
    failures = []
    cases = [
        # shape, dtype, weight decay, the most blocks (1: one block loops over the whole array)
        ((37, 11), np.float32, 0.01, adamw.MAX_GRID),
        ((300,), np.float32, 0.0, 1),
        ((5, 7), np.float64, 0.1, adamw.MAX_GRID),
        ((1,), np.float32, 0.01, adamw.MAX_GRID),
    ]
    for shape, dtype, decay, grid in cases:
        adamw.MAX_GRID = grid
        want, got = steps_both_ways(shape, dtype, decay, 3, rng)
        tol = 2e-6 if dtype == np.float32 else 1e-13
        for name, a, b in zip(("p", "m", "v"), got, want, strict=True):
            if a.dtype != dtype or not np.allclose(a, b, rtol=tol, atol=tol):
                failures.append(f"{name} differs: shape {shape} {dtype.__name__} grid<={grid}")
    adamw.MAX_GRID = 2
    if not poisoned((600,), np.float32, rng):  # 2 blocks of 256 threads: a grid-stride loop
        failures.append("an element was never written (grid-stride loop)")
    # Non-contiguous or mixed dtypes: declined, nothing touched.
    p = np.ones((4, 4), np.float32)
    if adamw.adamw_step(p[:, ::2], p[:, ::2], p[:, ::2], p[:, ::2], lr=1, beta1=0.9, beta2=0.9,
                        eps=1, weight_decay=0, step_size=1, correction2=1):  # fmt: skip
        failures.append("a strided view was not declined")
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
