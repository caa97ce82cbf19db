"""The fused kernels, and the one table that says when each one runs.

Every fused kernel is another implementation of a reference Function in
``tinymlm.nn.functional`` (or of ``tinymlm.optim.AdamW``'s update) and gives its numbers; tests
hold each pair together. Which one runs is decided here, and only here, by :func:`select`:

``reference``  the plain NumPy / CuPy code, always.
``numba``      the fused kernel wherever one exists for the op, the device and the dtype.
``auto``       (default) every kernel in :data:`TABLE` (each entry says what was measured),
               except CUDA attention, which is timed against the reference once per shape on
               first use (``tinymlm.kernels.attention``) and runs only where it wins.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass

from tinymlm import backend

MODES = ("auto", "reference", "numba")
_mode = "auto"


@dataclass(frozen=True)
class Kernel:
    """A fused implementation: where it lives and when ``auto`` takes it."""

    path: str  # "module:attribute", imported on first use (Numba compiles nothing until then)
    dtypes: tuple[str, ...] = ("float32", "float64")
    timed: bool = False  # auto: run it only where timing this shape says it is faster
    measured: str = ""  # the measurement behind the auto choice


_CPU = "tinymlm.kernels.cpu_fused"
_PROFILE = "benchmarks/profile_cpu.py: one pass over memory instead of a chain of NumPy temporaries"

# (op, device) -> the fused implementation. An op or device missing here has no kernel.
TABLE: dict[tuple[str, str], Kernel] = {
    ("cross_entropy", "cpu"): Kernel(
        "tinymlm.kernels.cross_entropy:FusedCrossEntropy",
        measured="benchmarks/results/cross_entropy_cpu.md: 2-10x faster at every size measured",
    ),
    ("cross_entropy", "cuda"): Kernel("tinymlm.kernels.cross_entropy:FusedCrossEntropy"),
    ("linear_cross_entropy", "cpu"): Kernel(
        "tinymlm.kernels.cross_entropy:FusedLinearCrossEntropy",
        measured="the cross-entropy kernel, and no M x V gradient buffer",
    ),
    ("linear_cross_entropy", "cuda"): Kernel(
        "tinymlm.kernels.cross_entropy:FusedLinearCrossEntropy"
    ),
    ("attention", "cpu"): Kernel(f"{_CPU}:FusedAttention", measured=_PROFILE),
    ("attention_dropout", "cpu"): Kernel(f"{_CPU}:FusedAttention", measured=_PROFILE),
    ("attention", "cuda"): Kernel("tinymlm.kernels.attention:fused_attention_or_none", timed=True),
    ("layer_norm", "cpu"): Kernel(f"{_CPU}:FusedLayerNorm", measured=_PROFILE),
    ("gelu", "cpu"): Kernel(f"{_CPU}:FusedGELU", measured=_PROFILE),
    ("embedding_backward", "cpu"): Kernel(f"{_CPU}:embedding_backward", measured=_PROFILE),
    ("adamw", "cpu"): Kernel(f"{_CPU}:adamw_step", measured=_PROFILE),
    ("adamw", "cuda"): Kernel(
        "tinymlm.kernels.adamw:adamw_step",
        measured="benchmarks/results/gpu_launches.md: one launch per parameter instead of ~13",
    ),
}


@dataclass(frozen=True)
class Selection:
    """What :func:`select` chose: the implementation, and whether it should run only where it
    measures faster for the shape at hand (``auto`` with a timed kernel)."""

    impl: object
    only_if_faster: bool


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


def select(op: str, *arrays) -> Selection | None:
    """The fused implementation of ``op`` for these arrays, or None for the reference path.

    The arrays must share one device and one dtype for a kernel to run.
    """
    if _mode == "reference":
        return None
    kernel = TABLE.get((op, backend.device_of(arrays[0])))
    if kernel is None:
        return None
    first, device = arrays[0], backend.device_of(arrays[0])
    if any(backend.device_of(a) != device or a.dtype != first.dtype for a in arrays):
        return None
    if first.dtype.name not in kernel.dtypes:
        return None
    module, name = kernel.path.split(":")
    impl = getattr(importlib.import_module(module), name)
    return Selection(impl, only_if_faster=kernel.timed and _mode == "auto")
