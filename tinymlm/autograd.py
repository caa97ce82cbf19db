"""The autograd engine: Tensor, Function, and reverse-mode differentiation.

A ``Tensor`` wraps an array (NumPy or CuPy) and remembers the ``Function`` that made it. A
``Function`` computes on raw arrays in ``forward`` and turns the gradient of its output into
gradients of its inputs in ``backward``. ``Tensor.backward()`` orders the graph with an
iterative depth-first topological sort (no recursion, so a 20,000-node chain is fine), then
walks it from the output back to the leaves, summing gradients where a tensor was used more
than once.

Calling ``backward()`` twice: by default the first call frees what the Functions saved for
backward (the memory of a training step is released as soon as it is no longer needed), and a
second call through the same graph raises ``RuntimeError`` saying so. Pass
``retain_graph=True`` to keep it; gradients then add up in ``.grad`` across calls, exactly as in
PyTorch. Only leaves (tensors made by the user, such as parameters) keep ``.grad``; call
``retain_grad()`` on an intermediate tensor to keep its gradient too.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from tinymlm import backend

_state = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_state, "grad_enabled", True)


@contextmanager
def no_grad():
    """Inside this block no graph is recorded: results have ``requires_grad=False``."""
    previous = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


class Function:
    """One differentiable operation.

    Subclasses define ``forward(*inputs, **options) -> array`` and ``backward(grad) -> grads``
    (one gradient per positional input, ``None`` where none is needed). ``forward`` receives
    raw arrays (or whatever non-Tensor constants were passed); ``self.needs_input_grad[i]``
    says whether input ``i`` wants a gradient, so backward can skip work nobody needs.

    The reuse rule. A Function never writes into an array it did not allocate itself: not its
    inputs (their owner, or another Function that saved them, may read them again), not the
    gradient ``g`` it is given (the engine may hand the same array to several Functions), and
    not its output once returned (the user may hold it). It may overwrite a buffer it allocated
    and never returned, such as a scratch array saved for backward: nothing else can read it.
    ``FusedLinearCrossEntropy`` does so with its logits. Fused kernels follow the same rule,
    and ``tests/test_fused_reuse.py`` checks it for every one of them: a second consumer of
    each input and output still gets the reference path's gradients, and ``backward()``
    leaves every tensor the user holds as it was.
    """

    def __init__(self):
        self.needs_input_grad: tuple[bool, ...] = ()
        self.saved_tensors: tuple = ()
        self.inputs: tuple = ()

    def save_for_backward(self, *arrays) -> None:
        self.saved_tensors = arrays

    def forward(self, *inputs, **options):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options) -> Tensor:
        fn = cls()
        fn.needs_input_grad = tuple(isinstance(t, Tensor) and t.requires_grad for t in inputs)
        raw = tuple(t.data if isinstance(t, Tensor) else t for t in inputs)
        backend.get_array_module(*raw)  # one device per operation, or a clear error
        out = fn.forward(*raw, **options)
        requires_grad = is_grad_enabled() and any(fn.needs_input_grad)
        result = Tensor(out, requires_grad=requires_grad)
        if requires_grad:
            fn.inputs = inputs  # the graph's edges: kept only when a gradient will flow
            result._ctx = fn
        else:
            fn.saved_tensors = ()
        return result


def raw(a):
    """The array inside a Tensor; anything else as it is."""
    return a.data if isinstance(a, Tensor) else a


def unbroadcast(grad, shape: tuple):
    """Sum ``grad`` over the axes that broadcasting added or stretched, back to ``shape``."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors that lead to ``root``, each after all of its inputs (iterative DFS)."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for parent in node._ctx.inputs or ():  # None: freed by an earlier backward()
                wanted = isinstance(parent, Tensor) and parent.requires_grad
                if wanted and id(parent) not in visited:
                    stack.append((parent, False))
    return order


class Tensor:
    """An array with a gradient. ``data`` is a NumPy or CuPy array; its dtype is kept."""

    __array_priority__ = 1000  # so ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        if not (hasattr(data, "shape") and hasattr(data, "dtype")) or isinstance(data, np.generic):
            data = np.asarray(data)
        if requires_grad and not backend.is_float(data.dtype):
            raise TypeError(f"only floating-point tensors can require gradients, not {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx: Function | None = None
        self._retains_grad = False

    # --- what it is ---------------------------------------------------------------------------
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: int(self.data.size))
    device = property(lambda self: backend.device_of(self.data))
    is_leaf = property(lambda self: self._ctx is None)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}, device={self.device!r}{grad})"

    def numpy(self) -> np.ndarray:
        """A NumPy copy of the data, from either device."""
        return backend.to_numpy(self.data).copy()

    def item(self):
        return self.data.item()

    def detach(self) -> Tensor:
        return Tensor(self.data)

    def retain_grad(self) -> None:
        self._retains_grad = True

    def to(self, target) -> Tensor:
        """A tensor on another device ('cpu' / 'cuda') or of another dtype (a leaf)."""
        if isinstance(target, str):
            data = backend.to_device(self.data, target)
        else:
            data = self.data.astype(target, copy=False)
        return Tensor(data, requires_grad=self.requires_grad and backend.is_float(data.dtype))

    # --- reverse mode ---------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Add d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` is the gradient flowing into ``self``; it defaults to 1 for a one-element
        tensor (a loss).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError("backward() needs a gradient argument for a non-scalar tensor")
            grad = xp.ones_like(self.data)
        elif isinstance(grad, Tensor):
            grad = grad.data
        grads = {id(self): xp.asarray(grad, dtype=self.dtype)}
        owned = set()  # ids whose gradient buffer is ours alone, so `+=` may write into it

        for node in reversed(_topological_order(self)):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._ctx is None or node._retains_grad:
                node._accumulate(g, g_is_owned=id(node) in owned)
            fn = node._ctx
            if fn is None:
                continue
            if fn.inputs is None:
                raise RuntimeError(
                    "backward() through a graph that was already freed by an earlier backward(): "
                    "pass retain_graph=True to the first call if you need to call it twice"
                )
            input_grads = fn.backward(g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for parent, pg in zip(fn.inputs, input_grads):
                if pg is None or not (isinstance(parent, Tensor) and parent.requires_grad):
                    continue
                pg = unbroadcast(pg, parent.shape)
                key = id(parent)
                if key not in grads:
                    grads[key] = pg
                elif key in owned:
                    grads[key] += pg
                else:  # the first gradient may alias another array: add into a new one
                    grads[key] = grads[key] + pg
                    owned.add(key)
            if not retain_graph:
                fn.inputs, fn.saved_tensors = None, ()

    def _accumulate(self, g, g_is_owned: bool) -> None:
        if g.dtype != self.dtype:
            g = g.astype(self.dtype)
        if self.grad is None:
            self.grad = g if g_is_owned else g.copy()
        else:
            self.grad += g

    # --- operations (defined in tinymlm.ops; attached below) -------------------------------------
    def __add__(self, other):
        return ops.add(self, other)

    def __radd__(self, other):
        return ops.add(other, self)

    def __sub__(self, other):
        return ops.sub(self, other)

    def __rsub__(self, other):
        return ops.sub(other, self)

    def __mul__(self, other):
        return ops.mul(self, other)

    def __rmul__(self, other):
        return ops.mul(other, self)

    def __truediv__(self, other):
        return ops.div(self, other)

    def __rtruediv__(self, other):
        return ops.div(other, self)

    def __neg__(self):
        return ops.neg(self)

    def __pow__(self, exponent):
        return ops.power(self, exponent)

    def __rpow__(self, base):
        return ops.power(base, self)

    def __matmul__(self, other):
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        return ops.matmul(other, self)

    def __getitem__(self, index):
        return ops.getitem(self, index)

    # Comparisons give boolean tensors without gradients (masks).
    def __lt__(self, other):
        return ops.compare(self, other, "less")

    def __le__(self, other):
        return ops.compare(self, other, "less_equal")

    def __gt__(self, other):
        return ops.compare(self, other, "greater")

    def __ge__(self, other):
        return ops.compare(self, other, "greater_equal")

    def eq(self, other):
        return ops.compare(self, other, "equal")

    def exp(self):
        return ops.exp(self)

    def log(self):
        return ops.log(self)

    def sqrt(self):
        return ops.sqrt(self)

    def tanh(self):
        return ops.tanh(self)

    def sum(self, axis=None, keepdims=False):
        return ops.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return ops.mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return ops.max(self, axis, keepdims)

    def reshape(self, *shape):
        return ops.reshape(self, *shape)

    def transpose(self, axis0: int, axis1: int):
        """Swap two axes (PyTorch's meaning)."""
        dims = list(range(self.ndim))
        dims[axis0], dims[axis1] = dims[axis1], dims[axis0]
        return ops.permute(self, *dims)

    def permute(self, *dims):
        return ops.permute(self, *dims)

    @property
    def T(self):
        return ops.permute(self, *reversed(range(self.ndim)))

    def masked_fill(self, mask, value):
        return ops.masked_fill(self, mask, value)


from tinymlm import ops  # noqa: E402  (ops needs Tensor and Function, defined above)
