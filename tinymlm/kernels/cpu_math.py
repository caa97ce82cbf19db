"""What the Numba CPU kernels share: a fast e^x, and when a loop is worth threading."""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# Loops over fewer elements than this run in the calling thread. A threaded loop waits for its
# slowest thread to be scheduled, which on cores busy with other work costs more than a small
# loop itself (benchmarks/results/cross_entropy_cpu.md). Attention's heads are large,
# independent pieces of work, and usually pass it.
PARALLEL_MIN_ELEMENTS = 1 << 23


# NumPy's exp is vectorised (SIMD); the math.exp a Numba loop calls is not: one libm call per
# element, three quarters of the kernel's time when it was used here. So the float32 kernel
# computes e^x itself, in plain arithmetic the compiler turns into SIMD code:
#     e^x = 2^y, y = x log2(e) = k + f with k = round(y), |f| <= 1/2,
#     2^f = e^{f ln 2} by its Taylor series to degree 7 (relative error below 1e-8 on |f| <= 1/2),
#     2^k by writing k + 127 into the exponent bits of a float32.
# Valid for x <= 88 (the kernels only call it on x - max <= 0); e^x = 0 below 2^-126.

_LOG2E = np.float32(math.log2(math.e))
_TAYLOR = tuple(np.float32(math.log(2.0) ** n / math.factorial(n)) for n in range(8))


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (C's union trick), one LLVM bitcast."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(fastmath=True)
def _exp_f32(x):
    y = max(x * _LOG2E, np.float32(-127.0))  # (-inf and underflow land on the 0 branch below)
    k = np.floor(y + np.float32(0.5))  # np.floor keeps float32 (math.floor gives an int64)
    f = y - k
    c0, c1, c2, c3, c4, c5, c6, c7 = _TAYLOR
    p = ((((((c7 * f + c6) * f + c5) * f + c4) * f + c3) * f + c2) * f + c1) * f + c0
    two_k = _int32_bits_as_float32((np.int32(k) + np.int32(127)) << np.int32(23))
    return p * two_k if y > np.float32(-126.0) else np.float32(0.0)


def kernel_exp(x):
    """e^x inside the CPU kernels: the SIMD-friendly one for float32, libm's for float64."""
    return math.exp(x)


@overload(kernel_exp)
def _exp_typed(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)


