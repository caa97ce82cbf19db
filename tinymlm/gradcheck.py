"""Finite-difference gradient checking in float64.

For a function f of some Tensors, the analytic gradient (from ``backward``) of the scalar
L = Σ f(x) ∘ w, with w a fixed random weighting so that every output element matters, is
compared with central differences (L(x + εe_i) − L(x − εe_i)) / 2ε, one element at a time.

The error of an element is |analytic − numeric| / max(|analytic|, |numeric|, floor): relative
for ordinary gradients, measured against ``floor`` for gradients near zero (where a relative
error means nothing). Central differences in float64 with ε = 1e-6 are accurate to about 1e-9
here, so a correct backward gives errors far below the default tolerance of 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinymlm import backend
from tinymlm.autograd import Tensor, no_grad


@dataclass
class GradcheckResult:
    ok: bool
    max_error: float  # the worst error over every checked element
    input_index: int  # which input holds the worst element
    element: tuple  # and where in it
    analytic: float
    numeric: float

    def __str__(self) -> str:
        verdict = "passed" if self.ok else "FAILED"
        return (
            f"gradcheck {verdict}: worst relative error {self.max_error:.3e} at input "
            f"{self.input_index}{list(self.element)} (analytic {self.analytic:.12g}, "
            f"numeric {self.numeric:.12g})"
        )


def _as_scalar_loss(out, weights):
    out = out if isinstance(out, (tuple, list)) else (out,)
    total = 0.0
    for o, w in zip(out, weights):
        total = (o * w).sum() + total
    return total


def gradcheck(fn, inputs, eps=1e-6, tol=1e-6, floor=1e-3, seed=0, raise_on_failure=False):
    """Check ``fn(*inputs)``'s gradients with respect to every input that requires grad.

    ``inputs`` are Tensors (float64 to be meaningful) or constants passed through unchanged.
    ``fn`` may return a Tensor or a tuple of Tensors. Returns a :class:`GradcheckResult`.
    """
    rng = np.random.default_rng(seed)
    tensors = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not tensors:
        raise ValueError("gradcheck: no input requires grad")
    for t in tensors:
        if t.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs, got {t.dtype}: use .to(np.float64)")
        t.grad = None
        if not t.data.flags.c_contiguous:  # perturbing must write through to t itself
            t.data = t.data.copy()

    out = fn(*inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    xp_weights = []
    for o in outs:
        xp_weights.append(backend.to_device(rng.standard_normal(o.shape), o.device))
    _as_scalar_loss(out, xp_weights).backward()
    analytic = [t.grad if t.grad is not None else np.zeros(t.shape) for t in tensors]

    worst = GradcheckResult(True, 0.0, -1, (), 0.0, 0.0)
    with no_grad():
        for ti, t in enumerate(tensors):
            flat = t.data.reshape(-1)  # a view: perturbing it perturbs t
            for i in range(flat.size):
                original = flat[i].item()
                flat[i] = original + eps
                plus = float(_as_scalar_loss(fn(*inputs), xp_weights).item())
                flat[i] = original - eps
                minus = float(_as_scalar_loss(fn(*inputs), xp_weights).item())
                flat[i] = original
                numeric = (plus - minus) / (2 * eps)
                a = float(analytic[ti].reshape(-1)[i])
                error = abs(a - numeric) / max(abs(a), abs(numeric), floor)
                if error > worst.max_error or worst.input_index < 0:
                    where = np.unravel_index(i, t.shape) if t.shape else ()
                    worst = GradcheckResult(
                        True, error, ti, tuple(int(j) for j in where), a, numeric
                    )
    worst.ok = worst.max_error <= tol
    if raise_on_failure and not worst.ok:
        raise AssertionError(str(worst))
    return worst
