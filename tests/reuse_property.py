"""The property every fused Function must have: it is invisible.

``problems(fused, reference, arrays)`` builds the same graph twice around one Function, once
with the fused implementation and once with the reference, and returns what differs (an empty
list when nothing does). The graph gives every tensor the Function touches a second consumer:

- each input is the output of ``tanh``, whose backward reads that very array again, and is
  also used by a second loss term: a Function that wrote into its input breaks both;
- the output feeds two terms, one of which (``out * out``) saves it for its own backward, and
  is added to another branch's tensor, so the engine hands the same gradient array to the
  Function and to ``exp``'s backward: writing into ``g`` or into the output breaks those.

Every leaf gradient must equal the reference path's (``rtol`` relative to the gradient's
largest element: 1e-12 in float64; kernels that take only float32 are checked in float32),
and every tensor the user holds (inputs and output) must be the same bytes after
``backward()`` as before. Used by ``tests/test_fused_reuse.py`` on the CPU and
by ``tests/sim_fused_reuse.py`` under the CUDA simulator.
"""

from __future__ import annotations

import numpy as np

from tinymlm.autograd import Tensor


def _run(fn, arrays, rng_seed: int):
    rng = np.random.default_rng(rng_seed)
    leaves = [Tensor(a.copy(), requires_grad=True) for a in arrays]  # the arrays' dtype
    inputs = [leaf.tanh() for leaf in leaves]  # non-leaf inputs: Tanh saved each array
    out = fn(*inputs)
    dtype = arrays[0].dtype
    side = Tensor(rng.standard_normal(out.shape).astype(dtype), requires_grad=True)
    r1, r2 = (rng.standard_normal(out.shape).astype(dtype) for _ in range(2))
    shared = out + side.exp()  # Add gives one gradient array to the Function and to Exp
    loss = (shared * r1).sum() + (out * out * r2).sum()
    for x in inputs:  # a second consumer of every input
        loss = loss + (x * rng.standard_normal(x.shape).astype(dtype)).sum()
    held = [t.numpy() for t in (*inputs, out)]
    loss.backward()
    changed = [i for i, (t, before) in enumerate(zip((*inputs, out), held))
               if not np.array_equal(t.data, before)]
    return out, [leaf.grad for leaf in leaves] + [side.grad], changed


def problems(fused, reference, arrays, fused_type: str, rtol: float = 1e-12) -> list[str]:
    """What differs between the fused and the reference graph (see the module docstring).

    ``fused_type``: the class name the fused output's Function must have, so that the check
    cannot pass by running the reference path twice.
    """
    found = []
    out, fused_grads, changed = _run(fused, arrays, rng_seed=7)
    ran = type(out._ctx).__name__
    if ran != fused_type:
        found.append(f"the fused path ran {ran}, not {fused_type}")
    if changed:
        found.append(f"backward() changed held tensors {changed} (the last is the output)")
    _, want_grads, _ = _run(reference, arrays, rng_seed=7)
    for i, (got, want) in enumerate(zip(fused_grads, want_grads)):
        scale = max(np.abs(want).max(), 1e-300)
        err = np.abs(got - want).max() / scale
        if not err <= rtol:
            found.append(f"gradient of input {i}: relative error {err:.3g} > {rtol}")
    return found
