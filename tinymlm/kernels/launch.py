"""Building and launching the CUDA kernels: the one place that knows about streams and limits.

Every Numba CUDA kernel of the package (and of the lab, ``kernels/``) is made with
:func:`cuda_kernel` and started with :func:`launch`:

* **Launch bounds.** ``cuda_kernel(block)`` compiles with ``launch_bounds=block``, the one
  block size the kernel is ever launched with. ptxas then keeps the registers per thread
  within what ``block`` threads may hold (65,536 per block: 64 each at 1024 threads) and
  spills instead of failing; without the bound a kernel that ptxas gave 72 registers fails at
  launch with "too many resources requested", on the GPU only. Numba's CUDA simulator has
  no launch bounds, so they are left out there.
* **Streams.** A real launch runs on CuPy's current stream, so it is ordered with the CuPy
  work around it, with no device synchronisation: ``kernel[grid, block, stream](*args)``
  with ``stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)``. A numba-cuda
  ``Stream`` is a plain handle, not a context manager (``with cuda.external_stream(...) as
  stream:`` raises ``TypeError`` on every version up to 0.30). Under the simulator the
  kernel runs on NumPy arrays, synchronously: ``kernel[grid, block](*args)``.
* **Counting.** :data:`launches` counts launches by kernel name; the GPU check reports how
  often each fused kernel ran in a training step (``reset_launch_counts()`` first).
* **Resources.** :func:`compiled_resources` lists, for every compiled specialization,
  registers per thread, local memory per thread and shared memory per block, as the driver
  reports them; :func:`compile_ptx` compiles a kernel for a compute capability with its own
  options (fastmath, launch bounds), for the PTX tests on a machine without a GPU.
"""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache

import numpy as np
from numba import config as numba_config
from numba import cuda

SIMULATOR = bool(numba_config.ENABLE_CUDASIM)

REGISTERS_PER_BLOCK = 65536  # every card from Kepler to Hopper
REGISTER_ALLOCATION_UNIT = 256  # registers are given to a warp in chunks of this many
MAX_THREADS_PER_BLOCK = 1024
STATIC_SHARED_LIMIT = 48 * 1024  # Numba has no dynamic shared memory opt-in: 48 KB per block

launches: Counter = Counter()  # kernel name -> launches since the last reset
_built: list = []  # every kernel made by cuda_kernel, for compiled_resources()


def cuda_kernel(block: int, fastmath: bool = True):
    """``cuda.jit`` for a kernel launched with ``block`` threads per block, bounded to it.

    ``block`` may also be the largest block size a kernel is launched with (the lab's naive
    kernels); launching more threads than the bound is an error on the GPU.
    """
    if not 1 <= block <= MAX_THREADS_PER_BLOCK:
        raise ValueError(f"a block has 1 to {MAX_THREADS_PER_BLOCK} threads, not {block}")
    options = {"fastmath": fastmath}
    if not SIMULATOR:  # the simulator's cuda.jit takes no launch_bounds
        options["launch_bounds"] = block

    def build(fn):
        kernel = cuda.jit(**options)(fn)
        kernel.max_block = block  # read by the launch tests and compiled_resources()
        _built.append(kernel)
        return kernel

    return build


def array_module(a, advice: str):
    """``cupy`` for a CuPy array; ``numpy`` for a NumPy array under the simulator (the tests'
    way in). A NumPy array on a real CUDA setup is refused with ``advice`` (what to call)."""
    if isinstance(a, np.ndarray):
        if not SIMULATOR:
            raise ValueError(advice)
        return np
    import cupy

    return cupy


def launch(kernel, grid, block: int, *args) -> None:
    """``kernel[grid, block](*args)`` on CuPy's current stream (see the module docstring).

    ``grid`` is an int or a tuple; an empty grid launches nothing (CUDA refuses a zero-sized
    grid, and there is no work).
    """
    if (grid if isinstance(grid, int) else math.prod(grid)) == 0:  # plain Python: no array
        return
    bound = getattr(kernel, "max_block", MAX_THREADS_PER_BLOCK)
    if block > bound:
        name = kernel_name(kernel)
        raise ValueError(f"{name} is bounded to {bound} threads per block, not {block}")
    launches[kernel_name(kernel)] += 1
    if SIMULATOR:
        kernel[grid, block](*args)
        return
    kernel[grid, block, current_stream()](*args)


def current_stream():
    """Numba's handle on CuPy's current stream."""
    import cupy

    return _external_stream(cupy.cuda.get_current_stream().ptr)


@lru_cache(maxsize=16)
def _external_stream(pointer: int):
    # One handle per stream pointer: the handle owns nothing (CuPy does), so reusing it for a
    # pointer that CuPy later hands to a new stream is still right.
    return cuda.external_stream(pointer)


def kernel_name(kernel) -> str:
    fn = getattr(kernel, "py_func", kernel)
    return getattr(fn, "__name__", type(kernel).__name__)


def reset_launch_counts() -> None:
    launches.clear()


# --- resources ----------------------------------------------------------------------------------


def registers_fit(registers_per_thread: int, block: int) -> bool:
    """Whether ``block`` threads with this many registers each fit one block's register file.

    Registers are allocated per warp, rounded up to the allocation unit.
    """
    warps = -(-block // 32)
    unit = REGISTER_ALLOCATION_UNIT
    per_warp = -(-registers_per_thread * 32 // unit) * unit
    return registers_per_thread <= 255 and warps * per_warp <= REGISTERS_PER_BLOCK


def compiled_resources() -> list[dict]:
    """One row per compiled specialization of every kernel made by :func:`cuda_kernel`:
    name, signature, launch bound, registers per thread, local memory per thread (spills and
    stacks) and static shared memory per block. Empty under the simulator."""
    rows = []
    for kernel in _built:
        for signature, compiled in getattr(kernel, "overloads", {}).items():
            rows.append(
                {
                    "kernel": kernel_name(kernel),
                    "signature": ", ".join(str(t) for t in signature),
                    "launch_bound": kernel.max_block,
                    "registers_per_thread": compiled.regs_per_thread,
                    "local_bytes_per_thread": compiled.local_mem_per_thread,
                    "shared_bytes_per_block": compiled.shared_mem_per_block,
                    "registers_fit": registers_fit(compiled.regs_per_thread, kernel.max_block),
                }
            )
    return rows


def compile_ptx(kernel, signature, cc=(9, 0)) -> str:
    """PTX of ``kernel`` for ``signature`` with the options it was made with (fastmath,
    launch bounds): what the GPU would compile, without one (needs libNVVM)."""
    options = getattr(kernel, "targetoptions", {})
    ptx, _ = cuda.compile_ptx(
        kernel.py_func,
        signature,
        cc=cc,
        fastmath=options.get("fastmath", False),
        launch_bounds=options.get("launch_bounds"),
    )
    return ptx
