"""The elementary operations of the autograd engine, each backward right beside its forward.

Every operation is a ``Function``: ``forward`` computes on raw arrays, ``backward`` maps the
output's gradient ``g`` to one gradient per input. Broadcasting is undone by the engine
(``autograd.unbroadcast``), so a backward may return gradients of the broadcast shape.
Operands may be Tensors, arrays or Python scalars; a Python scalar never changes the dtype.
The fused operations of a neural network (softmax, layer norm, attention, ...) live in
``tinymlm.nn.functional``.
"""

from __future__ import annotations

import itertools

from tinymlm import backend
from tinymlm.autograd import Function, Tensor


def _xp(*arrays):
    return backend.get_array_module(*arrays)


def _raw(a):
    return a.data if isinstance(a, Tensor) else a


# --- elementwise arithmetic -----------------------------------------------------------------------


class Add(Function):
    def forward(self, a, b):
        return a + b

    def backward(self, g):
        return g, g


class Sub(Function):
    def forward(self, a, b):
        return a - b

    def backward(self, g):
        return g, (-g if self.needs_input_grad[1] else None)


class Mul(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a * b

    def backward(self, g):
        a, b = self.saved_tensors
        return (
            g * b if self.needs_input_grad[0] else None,
            g * a if self.needs_input_grad[1] else None,
        )


class Div(Function):
    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a / b

    def backward(self, g):
        a, b = self.saved_tensors
        ga = g / b if self.needs_input_grad[0] else None
        gb = -g * a / (b * b) if self.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return -g


class Power(Function):
    """a ** b.  d/da = b·a^(b−1);  d/db = a^b·log a (only asked for when b is a Tensor)."""

    def forward(self, a, b):
        out = a**b
        self.save_for_backward(a, b, out)
        return out

    def backward(self, g):
        a, b, out = self.saved_tensors
        ga = g * b * a ** (b - 1) if self.needs_input_grad[0] else None
        gb = None
        if self.needs_input_grad[1]:  # log of the base in out's dtype: log(2.0) would be float64
            xp = _xp(out)
            gb = g * out * xp.log(xp.asarray(a, dtype=out.dtype))
        return ga, gb


class Exp(Function):
    def forward(self, a):
        out = _xp(a).exp(a)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        (out,) = self.saved_tensors
        return g * out


class Log(Function):
    def forward(self, a):
        self.save_for_backward(a)
        return _xp(a).log(a)

    def backward(self, g):
        (a,) = self.saved_tensors
        return g / a


class Sqrt(Function):
    def forward(self, a):
        out = _xp(a).sqrt(a)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        (out,) = self.saved_tensors
        return g / (2 * out)


class Tanh(Function):
    def forward(self, a):
        out = _xp(a).tanh(a)
        self.save_for_backward(out)
        return out

    def backward(self, g):
        (out,) = self.saved_tensors
        return g * (1 - out * out)


class Where(Function):
    """where(cond, a, b): the gradient goes to a where cond holds, to b elsewhere, never to cond."""

    def forward(self, cond, a, b):
        xp = _xp(cond, a, b)
        self.save_for_backward(cond)
        return xp.where(cond, a, b)

    def backward(self, g):
        (cond,) = self.saved_tensors
        xp = _xp(g)
        zero = g.dtype.type(0)
        ga = xp.where(cond, g, zero) if self.needs_input_grad[1] else None
        gb = xp.where(cond, zero, g) if self.needs_input_grad[2] else None
        return None, ga, gb


# --- matrix product -------------------------------------------------------------------------------


class MatMul(Function):
    """Batched a @ b for a (..., m, k), b (..., k, n): ga = g bᵀ, gb = aᵀ g.

    Batch dimensions broadcast; the engine sums the gradients back over them.
    """

    def forward(self, a, b):
        self.save_for_backward(a, b)
        return a @ b  # (..., m, n)

    def backward(self, g):
        a, b = self.saved_tensors
        xp = _xp(a, b)
        ga = g @ xp.swapaxes(b, -1, -2) if self.needs_input_grad[0] else None  # (..., m, k)
        gb = xp.swapaxes(a, -1, -2) @ g if self.needs_input_grad[1] else None  # (..., k, n)
        return ga, gb


def linear_grads(x2, weight, g2, needs: tuple[bool, bool, bool]):
    """The gradients of y = x Wᵀ + b for x (N, in), W (out, in), g = dL/dy (N, out):
    dx = g W, dW = gᵀ x, db = Σ_rows g; None for each input ``needs`` marks as unwanted."""
    gx = g2 @ weight if needs[0] else None  # (N, in)
    gw = None
    if needs[1]:
        if weight.shape[0] >= weight.shape[1]:
            gw = g2.T @ x2  # (out, in)
        else:  # BLAS is up to 2x faster making the taller of the two transposed products
            gw = _xp(x2).ascontiguousarray((x2.T @ g2).T)  # (out, in), C order for AdamW
    gb = g2.sum(axis=0) if needs[2] else None  # (out,)
    return gx, gw, gb


# --- reductions -----------------------------------------------------------------------------------


def _normalize_axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(sorted(a % ndim for a in axes))


def _expand_reduced(g, axes, keepdims: bool):
    """Put back the reduced axes as size-1 axes so ``g`` broadcasts against the input."""
    return g if keepdims else _xp(g).expand_dims(g, axes)


class Sum(Function):
    def forward(self, a, axis=None, keepdims=False):
        self.axes, self.keepdims, self.shape = _normalize_axes(axis, a.ndim), keepdims, a.shape
        return a.sum(axis=self.axes, keepdims=keepdims)

    def backward(self, g):
        g = _expand_reduced(g, self.axes, self.keepdims)
        return _xp(g).broadcast_to(g, self.shape)


class Max(Function):
    """The gradient is shared equally by the elements that tie for the maximum (torch.amax)."""

    def forward(self, a, axis=None, keepdims=False):
        self.axes, self.keepdims = _normalize_axes(axis, a.ndim), keepdims
        out = a.max(axis=self.axes, keepdims=True)
        self.save_for_backward(a, out)
        return out if keepdims else out.squeeze(self.axes)

    def backward(self, g):
        a, out = self.saved_tensors
        is_max = (a == out).astype(a.dtype)
        g = _expand_reduced(g, self.axes, self.keepdims)
        return is_max * (g / is_max.sum(axis=self.axes, keepdims=True))


# --- shapes and indexing --------------------------------------------------------------------------


class Reshape(Function):
    def forward(self, a, shape=()):
        self.shape = a.shape
        return a.reshape(shape)

    def backward(self, g):
        return g.reshape(self.shape)


class Permute(Function):
    def forward(self, a, dims=()):
        self.dims = dims
        return a.transpose(dims)

    def backward(self, g):
        inverse = [0] * len(self.dims)
        for i, d in enumerate(self.dims):
            inverse[d] = i
        return g.transpose(inverse)


def _is_basic_index(index) -> bool:
    """Slices, integers, None and ... select a view: every element at most once."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts)


class GetItem(Function):
    """x[index]. Backward writes g into a zero array; repeated fancy indices add up."""

    def forward(self, a, index=None):
        self.index, self.shape = index, a.shape
        return a[index]

    def backward(self, g):
        ga = _xp(g).zeros(self.shape, dtype=g.dtype)
        if _is_basic_index(self.index):
            ga[self.index] = g
        else:
            backend.scatter_add(ga, self.index, g)
        return ga


class Concatenate(Function):
    def forward(self, *arrays, axis=0):
        self.axis = axis
        self.sizes = [a.shape[axis] for a in arrays]
        return _xp(*arrays).concatenate(arrays, axis=axis)

    def backward(self, g):
        xp = _xp(g)
        cuts = list(itertools.accumulate(self.sizes[:-1]))  # (`sum` here is ops.sum)
        return tuple(xp.split(g, cuts, axis=self.axis))


# --- the functions people call --------------------------------------------------------------------


def add(a, b):
    return Add.apply(a, b)


def sub(a, b):
    return Sub.apply(a, b)


def mul(a, b):
    return Mul.apply(a, b)


def div(a, b):
    return Div.apply(a, b)


def neg(a):
    return Neg.apply(a)


def power(a, b):
    return Power.apply(a, b)


def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def sqrt(a):
    return Sqrt.apply(a)


def tanh(a):
    return Tanh.apply(a)


def matmul(a, b):
    return MatMul.apply(a, b)


def sum(a, axis=None, keepdims=False):  # noqa: A001 - NumPy's name
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False):
    shape = _raw(a).shape
    count = 1
    for ax in _normalize_axes(axis, len(shape)):
        count *= shape[ax]
    return Sum.apply(a, axis=axis, keepdims=keepdims) * (1.0 / count)


def max(a, axis=None, keepdims=False):  # noqa: A001 - NumPy's name
    return Max.apply(a, axis=axis, keepdims=keepdims)


def reshape(a, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape.apply(a, shape=shape)


def permute(a, *dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return Permute.apply(a, dims=tuple(dims))


def getitem(a, index):
    if isinstance(index, tuple):
        index = tuple(_raw(i) for i in index)
    else:
        index = _raw(index)
    return GetItem.apply(a, index=index)


def gather(a, axis: int, index):
    """torch.gather / take_along_axis: out[..., i, ...] = a[..., index[..., i, ...], ...]."""
    index = _raw(index)
    xp = _xp(index)
    axis = axis % index.ndim
    grids = list(xp.meshgrid(*[xp.arange(n) for n in index.shape], indexing="ij", sparse=True))
    grids[axis] = index
    return getitem(a, tuple(grids))


def concatenate(tensors, axis: int = 0):
    return Concatenate.apply(*tensors, axis=axis)


def stack(tensors, axis: int = 0):
    expanded = []
    for t in tensors:
        shape = list(_raw(t).shape)
        shape.insert(axis % (len(shape) + 1), 1)
        expanded.append(reshape(t, *shape))
    return concatenate(expanded, axis=axis)


def where(cond, a, b):
    return Where.apply(_raw(cond), a, b)


def masked_fill(a, mask, value):
    """``value`` where ``mask`` holds, ``a`` elsewhere; no gradient reaches the filled places."""
    return Where.apply(_raw(mask), value, a)


def compare(a, b, name: str) -> Tensor:
    """A boolean Tensor (no gradient): name is a NumPy ufunc such as 'less' or 'equal'."""
    ra, rb = _raw(a), _raw(b)
    return Tensor(getattr(_xp(ra, rb), name)(ra, rb))
