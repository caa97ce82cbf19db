"""The gradient checker itself: it passes correct backwards, catches wrong ones and says where."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlm import ops
from tinymlm.autograd import Function, Tensor
from tinymlm.gradcheck import GradcheckResult, gradcheck


class Cube(Function):
    """y = a³, dy/da = 3a²."""

    def forward(self, a):
        self.save_for_backward(a)
        return a**3

    def backward(self, g):
        (a,) = self.saved_tensors
        return g * 3 * a * a


class CubeWrongDerivative(Cube):
    """Forgets the factor 3: the textbook slip."""

    def backward(self, g):
        (a,) = self.saved_tensors
        return g * a * a


class WeightedSumOneBadElement(Function):
    """y = a + b; the gradient of b is wrong at flat position 4 only."""

    def forward(self, a, b):
        return a + b

    def backward(self, g):
        gb = g.copy()
        gb.reshape(-1)[4] += 0.01
        return g, gb


def _leaf(rng, shape=(2, 3)):
    return Tensor(rng.standard_normal(shape), requires_grad=True)


def test_a_correct_backward_passes(rng):
    result = gradcheck(Cube.apply, [_leaf(rng)])
    assert isinstance(result, GradcheckResult)
    assert result.ok and result.max_error <= 1e-6
    assert "passed" in str(result)


def test_a_wrong_derivative_fails(rng):
    x = _leaf(rng)
    result = gradcheck(CubeWrongDerivative.apply, [x])
    assert not result.ok
    assert result.max_error > 0.5  # 1/3 of the true gradient: the error is 2/3
    assert "FAILED" in str(result)
    # The report names the worst element: its analytic value is a third of the numeric one.
    np.testing.assert_allclose(result.analytic * 3, result.numeric, rtol=1e-6)


def test_the_report_says_where(rng):
    a, b = _leaf(rng), _leaf(rng)
    result = gradcheck(WeightedSumOneBadElement.apply, [a, b])
    assert not result.ok
    assert result.input_index == 1
    assert result.element == np.unravel_index(4, (2, 3))
    assert "input 1[1, 1]" in str(result)


def test_raise_on_failure(rng):
    with pytest.raises(AssertionError, match="FAILED"):
        gradcheck(CubeWrongDerivative.apply, [_leaf(rng)], raise_on_failure=True)


def test_refuses_float32_inputs(rng):
    x = Tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(Cube.apply, [x])


def test_needs_an_input_that_requires_grad(rng):
    with pytest.raises(ValueError, match="requires grad"):
        gradcheck(Cube.apply, [Tensor(rng.standard_normal(3))])


def test_constants_pass_through_and_inputs_are_restored(rng):
    x, c = _leaf(rng), rng.standard_normal((2, 3))
    before = x.data.copy()
    result = gradcheck(lambda a, k: a * k + ops.exp(a), [x, c])
    assert result.ok, str(result)
    np.testing.assert_array_equal(x.data, before)


def test_non_contiguous_inputs_are_perturbed_correctly(rng):
    x = Tensor(rng.standard_normal((3, 4)).T, requires_grad=True)  # a transposed view
    assert not x.data.flags.c_contiguous
    assert gradcheck(lambda a: a * a[:, :1], [x]).ok


def test_functions_with_several_outputs(rng):
    x = _leaf(rng)
    assert gradcheck(lambda a: (a.tanh(), a.exp().sum(0)), [x]).ok
    bad = gradcheck(lambda a: (a.tanh(), CubeWrongDerivative.apply(a)), [x])
    assert not bad.ok


def test_unused_input_has_zero_gradient(rng):
    x, y = _leaf(rng), _leaf(rng)
    result = gradcheck(lambda a, b: a * 2.0, [x, y])
    assert result.ok, str(result)
