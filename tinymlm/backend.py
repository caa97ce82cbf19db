"""The array module: NumPy on the CPU, CuPy on the GPU, chosen by the arrays themselves.

Model and autograd code never import numpy or cupy for math. They ask for the array module of
their inputs (``xp = get_array_module(x)``) and call ``xp.exp``, ``xp.matmul``, ... The few places
where NumPy and CuPy really differ (erf, scatter-add, random numbers) live here and nowhere else.
"""

from __future__ import annotations

import math

import numpy as np

_cupy = None  # the cupy module once imported; None until someone asks for the GPU

CUPY_INSTALL_HINT = (
    'install CuPy for your CUDA version: pip install -e ".[cuda12]" or ".[cuda13]" '
    "(nvidia-smi shows the CUDA version), or run on the CPU with --device cpu"
)


class DeviceMismatchError(TypeError):
    """A NumPy array met a CuPy array in one operation."""


def cupy_module():
    """Import CuPy on first use, with a message that says what to do when it is missing."""
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError as e:
            raise RuntimeError(
                f"CUDA needs CuPy, which is not installed: {CUPY_INSTALL_HINT}"
            ) from e
        _cupy = cupy
    return _cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one usable GPU."""
    try:
        cp = cupy_module()
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def is_cupy_array(a) -> bool:
    # Checking the type's module avoids importing CuPy just to answer "no".
    return type(a).__module__.startswith("cupy")


def get_array_module(*arrays):
    """numpy or cupy, whichever holds these arrays; an error when they disagree.

    Python scalars and None are neutral: they live on every device.
    """
    found = None
    for a in arrays:
        if a is None or isinstance(a, (int, float, bool, np.generic)):
            continue
        a = getattr(a, "data", a) if hasattr(a, "requires_grad") else a  # a Tensor -> its array
        module = "cupy" if is_cupy_array(a) else "numpy"
        if found is None:
            found = module
        elif found != module:
            raise DeviceMismatchError(
                "this operation mixes a NumPy (cpu) array with a CuPy (cuda) array: move one "
                'of them first, e.g. tensor.to("cuda") or model.to("cuda"), or tensor.numpy()'
            )
    return cupy_module() if found == "cupy" else np


def device_of(a) -> str:
    """'cuda' for a CuPy array, 'cpu' otherwise."""
    return "cuda" if is_cupy_array(a) else "cpu"


def normalize_device(device: str) -> str:
    device = str(device).lower()
    if device.startswith("cuda"):
        return "cuda"
    if device == "cpu":
        return "cpu"
    raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda'")


def to_device(a, device: str):
    """The same values on ``device`` ('cpu' or 'cuda'); no copy when already there."""
    device = normalize_device(device)
    if device == "cuda":
        return cupy_module().asarray(a)
    return a.get() if is_cupy_array(a) else np.asarray(a)


def asarray_on(a, like, dtype=None):
    """``a`` (an array of either device, or a list) as an array on the device of ``like``."""
    return get_array_module(like).asarray(to_device(a, device_of(like)), dtype=dtype)


def to_numpy(a) -> np.ndarray:
    """A NumPy array from either device (a copy for CuPy arrays)."""
    return a.get() if is_cupy_array(a) else np.asarray(a)


def is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f"


# --- where NumPy and CuPy differ ----------------------------------------------------------------

_numpy_erf = None


def erf(x):
    """The error function elementwise, in the dtype of ``x``.

    NumPy has no erf: on the CPU it is ``math.erf`` vectorised by Numba (compiled on first use);
    on the GPU, CuPy's.
    """
    if is_cupy_array(x):
        from cupyx.scipy.special import erf as cupy_erf

        return cupy_erf(x)
    global _numpy_erf
    if _numpy_erf is None:
        from numba import vectorize

        @vectorize(["float32(float32)", "float64(float64)"], cache=True)
        def _erf(v):
            return math.erf(v)

        _numpy_erf = _erf
    return _numpy_erf(x)


def scatter_add(target, indices, values) -> None:
    """``target[indices[i]] += values[i]`` with repeated indices adding up (in place).

    ``add.at`` on both devices (CuPy's runs on atomics; its older ``cupyx.scatter_add`` is
    deprecated).
    """
    if is_cupy_array(target):
        cupy_module().add.at(target, indices, values)
    else:
        np.add.at(target, indices, values)


# --- random numbers: one seeded generator per device ---------------------------------------------

_generators: dict[str, object] = {}
_seed = 0


def manual_seed(seed: int) -> None:
    """Reseed the default generators of every device (dropout, initialisation)."""
    global _seed
    _seed = int(seed)
    _generators.clear()


def default_generator(device: str = "cpu"):
    """The seeded generator of a device: a NumPy ``Generator`` or a CuPy one."""
    device = normalize_device(device)
    if device not in _generators:
        if device == "cuda":
            _generators[device] = cupy_module().random.default_rng(_seed)
        else:
            _generators[device] = np.random.default_rng(_seed)
    return _generators[device]
