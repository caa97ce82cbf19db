"""The engine's semantics (backward, retain_graph, no_grad, leaves, accumulation), deep graphs,
and the backend (array modules, device mixing, CuPy's absence, seeded generators)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import tinymlm
from tinymlm import backend, ops
from tinymlm.autograd import Function, Tensor, no_grad, unbroadcast


def _leaf(rng, shape=(2, 3)):
    return Tensor(rng.standard_normal(shape), requires_grad=True)


# --- backward() semantics --------------------------------------------------------------------


def test_gradient_of_a_simple_expression(rng):
    x, y = _leaf(rng), _leaf(rng)
    (x * y + x.exp()).sum().backward()
    np.testing.assert_allclose(x.grad, y.data + np.exp(x.data), rtol=1e-15)
    np.testing.assert_allclose(y.grad, x.data, rtol=1e-15)


def test_second_backward_through_a_freed_graph_raises(rng):
    x = _leaf(rng)
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        loss.backward()


def test_second_backward_through_a_shared_freed_subgraph_raises(rng):
    x = _leaf(rng)
    h = x.tanh()
    (h * 2.0).sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * 3.0).sum().backward()


def test_retain_graph_lets_gradients_accumulate(rng):
    x = _leaf(rng)
    loss = (x * x.tanh()).sum()
    loss.backward(retain_graph=True)
    once = x.grad.copy()
    loss.backward(retain_graph=True)
    np.testing.assert_allclose(x.grad, 2 * once, rtol=1e-15)
    loss.backward()  # a last call may free the graph
    np.testing.assert_allclose(x.grad, 3 * once, rtol=1e-15)


def test_gradients_from_separate_graphs_add_up(rng):
    x = _leaf(rng)
    (x * 2.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2.0 + 2 * x.data, rtol=1e-15)


def test_accumulation_does_not_write_into_other_arrays(rng):
    # The first gradient a leaf receives may alias an array someone else owns (here g itself);
    # accumulating into the leaf must not change it.
    x = _leaf(rng)
    g = rng.standard_normal((2, 3))
    g_before = g.copy()
    (x + 0.0).backward(g)
    (x + 0.0).backward(g)
    np.testing.assert_array_equal(g, g_before)
    np.testing.assert_allclose(x.grad, 2 * g, rtol=1e-15)


def test_no_grad_records_nothing(rng):
    x = _leaf(rng)
    with no_grad():
        assert not tinymlm.is_grad_enabled()
        y = (x * 2.0).exp().sum()
    assert tinymlm.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_is_restored_after_an_exception(rng):
    with pytest.raises(KeyError), no_grad():
        raise KeyError("an error inside the block")
    assert tinymlm.is_grad_enabled()


def test_only_leaves_keep_grad_unless_retain_grad(rng):
    x = _leaf(rng)
    h = x * 3.0
    kept = x.tanh()
    kept.retain_grad()
    (h * kept).sum().backward()
    assert x.is_leaf and not h.is_leaf
    assert h.grad is None
    np.testing.assert_allclose(kept.grad, h.data, rtol=1e-15)
    t = np.tanh(x.data)
    np.testing.assert_allclose(x.grad, 3.0 * t + 3.0 * x.data * (1 - t * t), rtol=1e-14)


def test_inputs_that_do_not_require_grad_get_none(rng):
    x, c = _leaf(rng), Tensor(rng.standard_normal((2, 3)))
    (x * c).sum().backward()
    assert c.grad is None and x.grad is not None


def test_backward_on_a_non_scalar_needs_a_gradient(rng):
    y = _leaf(rng) * 2.0
    with pytest.raises(RuntimeError, match="gradient argument"):
        y.backward()


def test_backward_with_an_explicit_gradient(rng):
    x = _leaf(rng)
    g = rng.standard_normal((2, 3))
    (x * 2.0).backward(Tensor(g))
    np.testing.assert_allclose(x.grad, 2.0 * g, rtol=1e-15)


def test_only_float_tensors_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)


def test_detach_and_to_make_leaves(rng):
    x = _leaf(rng)
    y = (x * 2.0).detach()
    assert y.is_leaf and not y.requires_grad
    z = x.to(np.float32)
    assert z.dtype == np.float32 and z.requires_grad and z.is_leaf
    assert x.to("cpu").device == "cpu"


def test_tensor_from_python_values_and_numpy_on_the_left(rng):
    t = Tensor([1.0, 2.0])
    assert t.shape == (2,) and t.dtype == np.float64 and len(t) == 2
    a = rng.standard_normal(2)
    x = Tensor(rng.standard_normal(2), requires_grad=True)
    y = a * x + a  # ndarray on the left still builds a graph (__array_priority__)
    assert isinstance(y, Tensor) and y.requires_grad
    y.sum().backward()
    np.testing.assert_allclose(x.grad, a, rtol=1e-15)


@pytest.mark.parametrize(
    "grad_shape, shape",
    [((2, 3), (2, 3)), ((4, 2, 3), (2, 3)), ((2, 3), (1, 3)), ((5, 2, 3), (2, 1)), ((2, 3), ())],
)
def test_unbroadcast_sums_what_broadcasting_spread(grad_shape, shape, rng):
    g = rng.standard_normal(grad_shape)
    reduced = unbroadcast(g, shape)
    assert reduced.shape == shape
    # Σ over the result equals Σ over g, and broadcasting a Tensor of `shape` gives this grad.
    x = Tensor(np.zeros(shape), requires_grad=True)
    (x + np.zeros(grad_shape)).backward(g)
    np.testing.assert_allclose(x.grad, reduced, rtol=1e-14)
    np.testing.assert_allclose(reduced.sum(), g.sum(), rtol=1e-12)


# --- deep graphs: iterative, linear time ---------------------------------------------------


def _chain(n: int):
    x = Tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(n):
        y = y * 1.0001 if _ % 2 else y + 0.5
    return x, y.sum()


def test_a_20000_node_chain_backpropagates():
    n = 20_000
    assert n > sys.getrecursionlimit()  # a recursive walk would fail here
    x, loss = _chain(n)
    loss.backward()
    np.testing.assert_allclose(x.grad, np.full(2, 1.0001 ** (n // 2)), rtol=1e-12)


class CountedAdd(Function):
    """a + b, counting its backward calls."""

    calls = 0

    def forward(self, a, b):
        return a + b

    def backward(self, g):
        CountedAdd.calls += 1
        return g, g


def test_backward_visits_each_node_once():
    # y_{i+1} = y_i + y_i: 2^60 paths from the loss to x. A walk that followed paths instead of
    # visiting nodes would never finish; the engine calls each backward exactly once (linear
    # work in the size of the graph) and sums the fan-out: dy/dx = 2^60.
    x = Tensor(np.ones(1), requires_grad=True)
    y = x
    for _ in range(60):
        y = CountedAdd.apply(y, y)
    CountedAdd.calls = 0
    y.sum().backward()
    assert CountedAdd.calls == 60
    assert x.grad[0] == 2.0**60


# --- custom Functions ------------------------------------------------------------------------


class ScaleBy(Function):
    """y = a · s with a keyword option; records needs_input_grad."""

    def forward(self, a, b, *, s=1.0):
        self.s = s
        self.save_for_backward(a, b)
        return a * b * s

    def backward(self, g):
        a, b = self.saved_tensors
        self.seen_needs = self.needs_input_grad
        return (
            g * b * self.s if self.needs_input_grad[0] else None,
            g * a * self.s if self.needs_input_grad[1] else None,
        )


def test_custom_function_receives_options_and_needs_input_grad(rng):
    x, c = _leaf(rng), rng.standard_normal((2, 3))
    y = ScaleBy.apply(x, c, s=3.0)
    np.testing.assert_allclose(y.data, x.data * c * 3.0, rtol=1e-15)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 3.0 * c, rtol=1e-15)
    assert y._ctx is None or y._ctx.saved_tensors == ()  # freed after backward


def test_function_without_grad_saves_nothing(rng):
    y = ScaleBy.apply(rng.standard_normal(2), rng.standard_normal(2), s=2.0)
    assert not y.requires_grad and y.is_leaf


# --- backend -----------------------------------------------------------------------------------


def test_get_array_module_of_numpy_and_neutral_values(rng):
    a = rng.standard_normal(3)
    assert backend.get_array_module(a) is np
    assert backend.get_array_module(a, 2.0, None, np.float32(1), Tensor(a)) is np
    assert backend.get_array_module() is np
    assert backend.device_of(a) == "cpu" and Tensor(a).device == "cpu"


def test_mixing_numpy_and_cupy_arrays_raises(monkeypatch, rng):
    class FakeCupyArray:
        shape, dtype = (3,), np.dtype(np.float64)

    fake = FakeCupyArray()
    real_is_cupy = backend.is_cupy_array
    monkeypatch.setattr(backend, "is_cupy_array", lambda a: a is fake or real_is_cupy(a))
    with pytest.raises(backend.DeviceMismatchError, match='to\\("cuda"\\)'):
        backend.get_array_module(rng.standard_normal(3), fake)
    with pytest.raises(backend.DeviceMismatchError):
        ops.Add.apply(Tensor(rng.standard_normal(3)), fake)  # checked by every Function
    assert issubclass(backend.DeviceMismatchError, TypeError)


def test_missing_cupy_gives_an_install_hint(monkeypatch):
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed: its absence cannot be tested here")
    except ImportError:
        pass
    monkeypatch.setattr(backend, "_cupy", None)
    with pytest.raises(RuntimeError, match="pip install"):
        backend.cupy_module()
    assert backend.cuda_available() is False
    with pytest.raises(RuntimeError, match="pip install"):
        Tensor(np.ones(2)).to("cuda")


def test_normalize_device():
    assert backend.normalize_device("CUDA:0") == "cuda"
    assert backend.normalize_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        backend.normalize_device("tpu")


def test_erf_matches_math_erf_in_both_float_widths():
    import math

    x = np.linspace(-4, 4, 17)
    expected = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(backend.erf(x), expected, rtol=1e-15, atol=1e-16)
    y = backend.erf(x.astype(np.float32))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)


def test_scatter_add_adds_repeated_indices():
    target = np.zeros((3, 2))
    backend.scatter_add(target, np.array([0, 2, 0]), np.ones((3, 2)))
    np.testing.assert_array_equal(target, [[2, 2], [0, 0], [1, 1]])


def test_manual_seed_resets_the_default_generator():
    backend.manual_seed(42)
    first = backend.default_generator("cpu").random(4)
    assert backend.default_generator("cpu") is backend.default_generator("cpu")
    backend.manual_seed(42)
    np.testing.assert_array_equal(backend.default_generator("cpu").random(4), first)
    np.testing.assert_array_equal(first, np.random.default_rng(42).random(4))
    backend.manual_seed(0)
