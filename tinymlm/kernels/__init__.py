"""Production kernels and the one switch that chooses between them and the reference path.

``reference``  the plain NumPy / CuPy code in ``tinymlm.nn.functional`` (always available).
``numba``      the fused Numba kernels: CUDA kernels for CuPy arrays, CPU kernels for NumPy arrays
               where one exists.
``auto``       (default) the kernels on the GPU (attention: where it measures faster, timed once
               per shape on first use); on the CPU, the kernels that were measured to beat
               the reference path there (see ``benchmarks/``).

The functional layer asks :func:`kernel_choice` once per call; nothing else reads the switch.
"""

from __future__ import annotations

from contextlib import contextmanager

MODES = ("auto", "reference", "numba")
_mode = "auto"


def set_kernels(mode: str) -> None:
    """Choose ``"auto"``, ``"reference"`` or ``"numba"`` for every later call."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"kernels must be one of {MODES}, got {mode!r}")
    _mode = mode


def kernels_mode() -> str:
    return _mode


@contextmanager
def use_kernels(mode: str):
    """Temporarily switch the kernels: ``with use_kernels("reference"): ...``."""
    previous = _mode
    set_kernels(mode)
    try:
        yield
    finally:
        set_kernels(previous)


def kernel_choice(on_gpu: bool, cpu_kernel_is_faster: bool) -> bool:
    """True when the fused kernel should run for an array on this device."""
    if _mode == "reference":
        return False
    if _mode == "numba":
        return True
    return on_gpu or cpu_kernel_is_faster
