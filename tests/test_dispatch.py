"""The one dispatch table: op x device x dtype x mode -> the fused implementation or None."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlm import kernels
from tinymlm.autograd import Tensor
from tinymlm.nn import functional as F


def test_every_entry_names_an_implementation_that_exists():
    for (op, device), kernel in kernels.TABLE.items():
        module, name = kernel.path.split(":")  # the CUDA modules import without a GPU
        assert hasattr(__import__(module, fromlist=[name]), name), (op, device, kernel.path)


@pytest.mark.parametrize("mode, want", [("auto", True), ("numba", True), ("reference", False)])
def test_the_mode_decides(mode, want):
    x = np.zeros((2, 3), dtype=np.float32)
    with kernels.use_kernels(mode):
        assert (kernels.select("gelu", x) is not None) is want


def test_dtypes_and_mixed_arrays_take_the_reference_path():
    f32, f64 = np.zeros(3, np.float32), np.zeros(3, np.float64)
    with kernels.use_kernels("numba"):
        assert kernels.select("gelu", np.zeros(3, np.float16)) is None  # no float16 kernel
        assert kernels.select("layer_norm", f32, f64, f32) is None  # one dtype per call
        assert kernels.select("no such op", f32) is None
        assert kernels.select("layer_norm", f64, f64, f64).impl.__name__ == "FusedLayerNorm"


def test_timed_kernels_are_timed_only_in_auto(monkeypatch):
    from tinymlm import backend

    monkeypatch.setattr(backend, "device_of", lambda a: "cuda")  # as if the arrays were CuPy's
    q = np.zeros((1, 1, 4, 8), np.float32)
    with kernels.use_kernels("auto"):
        assert kernels.select("attention", q, q, q).only_if_faster
        assert kernels.select("attention_dropout", q, q, q) is None  # no CUDA kernel with dropout
    with kernels.use_kernels("numba"):
        assert not kernels.select("attention", q, q, q).only_if_faster


def test_the_functional_layer_follows_the_table(monkeypatch):
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    assert type(F.gelu(x)._ctx).__name__ == "FusedGELU"
    monkeypatch.delitem(kernels.TABLE, ("gelu", "cpu"))
    assert type(F.gelu(x)._ctx).__name__ == "GELU"  # no entry: the reference Function


def test_a_bad_mode_is_refused():
    with pytest.raises(ValueError, match="auto"):
        kernels.set_kernels("fast")
