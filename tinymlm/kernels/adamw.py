"""AdamW's update on the GPU as one Numba CUDA kernel per parameter.

``tinymlm.optim.AdamW`` written with CuPy operators launches 13 kernels per parameter (14 with
weight decay): every ``*=``, ``+=``, product, square root and quotient is a kernel of its own,
and each reads or writes a whole parameter-sized array, some of them temporaries. This kernel
does the same arithmetic for one element in registers, reading p, g, m, v once and writing p,
m, v once:

    m ← β₁ m + (1 − β₁) g,     v ← β₂ v + (1 − β₂) g²,
    p ← p (1 − lr λ) − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)

(the CPU kernel, ``tinymlm.kernels.cpu_fused.adamw_step``, is the same loop). The numbers are
the reference path's up to the rounding of a fused multiply-add.

One launch per parameter, not one for all: the gradients are separate arrays that the autograd
engine allocates, and a kernel cannot take a list of arrays. (One launch for every parameter
needs the parameters, gradients and moments each in one flat buffer, which the engine would have
to write its gradients into; see ``benchmarks/results/gpu_launches.md``.)

The hyperparameters are passed by value: nothing here reads the device, so a training step
never waits for it.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import cuda

from tinymlm.kernels.launch import array_module, cuda_kernel, launch

BLOCK = 256
MAX_GRID = 132 * 16  # enough blocks to fill an H100 (132 SMs); larger arrays loop (grid stride)


@cache
def adamw_kernel():
    """Kernel ``(p, g, m, v, decay_factor, beta1, one_minus_beta1, beta2, one_minus_beta2,
    inv_correction2, eps, step_size)`` on 1-D arrays, any grid (a grid-stride loop)."""

    # No fastmath: IEEE division and square root, as CuPy's operators compute them.
    @cuda_kernel(BLOCK, fastmath=False)
    def adamw_update(
        p,
        g,
        m,
        v,
        decay_factor,
        beta1,
        one_minus_beta1,
        beta2,
        one_minus_beta2,
        inv_correction2,
        eps,
        step_size,
    ):
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            gi = g[i]
            mi = m[i] * beta1 + one_minus_beta1 * gi
            vi = v[i] * beta2 + one_minus_beta2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] = p[i] * decay_factor - step_size * (mi / (math.sqrt(vi) * inv_correction2 + eps))

    return adamw_update


def adamw_step(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step_size, correction2):
    """One AdamW update of CuPy arrays ``p``, ``m``, ``v`` in place (NumPy arrays under the
    simulator); ``tinymlm.optim.AdamW.step``'s arguments. Returns False, touching nothing, when
    an array is not contiguous or the dtypes differ, so the caller takes the plain path."""
    array_module(p, "the CUDA AdamW kernel takes CuPy arrays; NumPy arrays go to cpu_fused")
    arrays = (p, g, m, v)
    if not all(a.flags.c_contiguous and a.dtype == p.dtype for a in arrays):
        return False
    if p.dtype not in (np.float32, np.float64):
        return False
    from tinymlm.optim import fused_update_scalars

    scalars = fused_update_scalars(p.dtype, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                   weight_decay=weight_decay, step_size=step_size,
                                   correction2=correction2)
    blocks = min(-(-p.size // BLOCK), MAX_GRID)
    launch(adamw_kernel(), blocks, BLOCK, *(a.reshape(-1) for a in arrays), *scalars)
    return True
