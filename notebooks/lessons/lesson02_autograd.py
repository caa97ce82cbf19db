"""Lesson 2: autograd from scratch."""

from lessons.cells import code, md

CELLS = [
    md(r"""
# Lesson 2 — Autograd from scratch

Training a network means computing $\partial \ell / \partial w$ for every one of its numbers
$w$. tinymlm does it the way PyTorch does, with **reverse-mode automatic differentiation**,
in one short file (`tinymlm/autograd.py`). This lesson opens it up:

1. every operation records a node in a **graph**;
2. `backward()` visits the graph in **topological order** — and we will see a graph where any
   other order gives the wrong answer;
3. **broadcasting** in the forward pass means *summing* in the backward pass;
4. a **gradient check** by finite differences, which you will run yourself, and which catches a
   deliberately wrong backward pass.
"""),
    code(r"""
import inspect
import numpy as np

from tinymlm import Tensor, Function
from tinymlm.autograd import _topological_order, unbroadcast
from tinymlm.gradcheck import gradcheck
"""),
    md(r"""
## 1. A graph for a small expression

Take $f(a, b) = (a \cdot b + a)^2$ with $a = 3$, $b = -2$. Each operation makes a new `Tensor`
whose `_ctx` is the `Function` that made it; the Function remembers its inputs. Those links
*are* the graph.
"""),
    code(r"""
a = Tensor(np.array(3.0), requires_grad=True)
b = Tensor(np.array(-2.0), requires_grad=True)
c = a * b          # -6
d = c + a          # -3      (a is used twice: in c and here)
f = d ** 2         #  9

def describe(t, names):
    fn = t._ctx
    if fn is None:
        return f"{names[id(t)]} = {t.item():g}  (a leaf)"
    inputs = ", ".join(names.get(id(i), repr(i)) for i in fn.inputs)
    return f"{names[id(t)]} = {type(fn).__name__}({inputs}) = {t.item():g}"

names = {id(a): "a", id(b): "b", id(c): "c", id(d): "d", id(f): "f"}
for t in (a, b, c, d, f):
    print(describe(t, names))
"""),
    md(r"""
Each Function knows its own local derivative. The engine's only job is the **chain rule**:
walking from $f$ back to the leaves, the gradient of a node is the sum, over every place it was
used, of (gradient of the user) × (local derivative). By hand:
$$\frac{\partial f}{\partial d} = 2d = -6,\quad
\frac{\partial f}{\partial c} = \frac{\partial f}{\partial d} = -6,\quad
\frac{\partial f}{\partial b} = \frac{\partial f}{\partial c}\, a = -18,\quad
\frac{\partial f}{\partial a} = \underbrace{\frac{\partial f}{\partial c}\, b}_{\text{through } c}
+ \underbrace{\frac{\partial f}{\partial d}}_{\text{directly}} = 12 - 6 = 6.$$
"""),
    code(r"""
f.backward()
print("df/da =", a.grad, "  df/db =", b.grad)
assert a.grad == 2 * (a.item() * b.item() + a.item()) * (b.item() + 1)   # 2d (b + 1)
assert b.grad == 2 * (a.item() * b.item() + a.item()) * a.item()         # 2d a
"""),
    md(r"""
## 2. Why a topological order

A node's gradient is complete only once **every** user of the node has sent its share. So a
node may pass its gradient on only after all of its users are done: the graph must be visited
in reverse *topological* order (each node after everything that depends on it).

To see what goes wrong otherwise, here is the obvious alternative — a depth-first walk that
pushes a node's gradient to its inputs as soon as it is reached — written with the very same
Functions. In our graph it reaches `a` through `d` first (gradient $-6$), passes that on, and
never counts the share that arrives later through `c`:
"""),
    code(r"""
def naive_backward(root):
    '''Depth-first: each node passes its gradient on the first time it is reached. WRONG.'''
    grads, done = {id(root): np.ones(())}, set()
    def visit(node):
        if id(node) in done:
            return                        # already handled: a later share is lost
        done.add(id(node))
        if node._ctx is None:
            node.grad = grads[id(node)]
            return
        for parent, g in zip(node._ctx.inputs, node._ctx.backward(grads[id(node)])):
            if isinstance(parent, Tensor) and parent.requires_grad:
                grads[id(parent)] = grads.get(id(parent), 0) + g
        for parent in reversed(node._ctx.inputs):
            if isinstance(parent, Tensor) and parent.requires_grad:
                visit(parent)
    visit(root)

a2 = Tensor(np.array(3.0), requires_grad=True)
b2 = Tensor(np.array(-2.0), requires_grad=True)
f2 = (a2 * b2 + a2) ** 2
naive_backward(f2)
print("naive depth-first: df/da =", a2.grad, "(should be 6)")
assert a2.grad != 6.0
"""),
    md(r"""
tinymlm's engine first sorts the graph (an *iterative* depth-first search that emits a node
after all of its inputs — no recursion, so a graph 20,000 operations deep is fine), then walks
that list backwards, adding (`+=`) each share into the node's gradient before the node is used:
"""),
    code(r"""
c = a * b; d = c + a; f = d ** 2       # the same graph again: backward() freed the first one
names = {id(a): "a", id(b): "b", id(c): "c", id(d): "d", id(f): "f"}
order = _topological_order(f)
print("topological order:", [names[id(t)] for t in order])
print("backward visits:  ", [names[id(t)] for t in reversed(order)])
position = {id(t): i for i, t in enumerate(order)}
for t in order:                                   # every input comes before its user
    if t._ctx is not None:
        assert all(position[id(i)] < position[id(t)] for i in t._ctx.inputs
                   if isinstance(i, Tensor) and i.requires_grad)
print(inspect.getsource(_topological_order))
"""),
    md(r"""
## 3. Broadcasting gradients

NumPy broadcasting lets `x + bias` add a vector of shape $(4,)$ to every row of an $(3, 4)$
matrix: the bias is *copied* along the rows. The backward of a copy is a **sum**: each copy
sends back its gradient, and they add up. The engine undoes broadcasting for every operation
in one place, `unbroadcast`: sum over the axes broadcasting added, and over the axes it
stretched from size 1.
"""),
    code(r"""
rng = np.random.default_rng(0)
x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
bias = Tensor(rng.standard_normal(4), requires_grad=True)
column = Tensor(rng.standard_normal((3, 1)), requires_grad=True)
y = (x + bias) * column           # (3, 4): bias copied over rows, column over columns
weights = rng.standard_normal((3, 4))
(y * weights).sum().backward()    # a loss that gives every element of y its own gradient

g = weights                       # dL/dy
print("bias.grad  ", bias.grad.shape, "  column.grad", column.grad.shape)
assert bias.grad.shape == (4,) and column.grad.shape == (3, 1)
np.testing.assert_allclose(bias.grad, (g * column.data).sum(axis=0))
np.testing.assert_allclose(column.grad, (g * (x.data + bias.data)).sum(axis=1, keepdims=True))
print(inspect.getsource(unbroadcast))
"""),
    md(r"""
## 4. Checking a gradient by finite differences

How do we know a backward pass is right? Compare it with the definition of the derivative.
For a scalar function $L$ and a small $\varepsilon$, the **central difference**
$$\frac{L(x + \varepsilon e_i) - L(x - \varepsilon e_i)}{2\varepsilon}
= \frac{\partial L}{\partial x_i} + O(\varepsilon^2)$$
needs nothing but forward passes. In float64 with $\varepsilon = 10^{-6}$ it agrees with a
correct analytic gradient to about $10^{-9}$; a wrong backward is off by far more.

Run it yourself, one element at a time, on $L(x) = \sum_j \tanh(x_j)\, e^{x_j}$:
"""),
    code(r"""
def L(t):
    return (t.tanh() * t.exp()).sum()

x = Tensor(rng.standard_normal(5), requires_grad=True)
L(x).backward()
analytic = x.grad.copy()

eps = 1e-6
numeric = np.zeros(5)
for i in range(5):
    plus, minus = x.data.copy(), x.data.copy()
    plus[i] += eps
    minus[i] -= eps
    numeric[i] = (L(Tensor(plus)).item() - L(Tensor(minus)).item()) / (2 * eps)

print("analytic", analytic)
print("numeric ", numeric)
relative = np.abs(analytic - numeric) / np.maximum(np.abs(numeric), 1e-3)
print("worst relative error", relative.max())
assert relative.max() < 1e-6
"""),
    md(r"""
`tinymlm.gradcheck.gradcheck` does the same for any function of several tensors, with a random
weighting of the outputs (so every output element matters) and a clear report. A gradient check
is only worth something if it can fail, so here is a Function with a deliberately wrong
backward — $\frac{d}{dx} x^3$ written as $2x^2$:
"""),
    code(r"""
class Cube(Function):
    def forward(self, x):
        self.save_for_backward(x)
        return x ** 3
    def backward(self, g):
        (x,) = self.saved_tensors
        return g * 3 * x ** 2

class WrongCube(Cube):
    def backward(self, g):
        (x,) = self.saved_tensors
        return g * 2 * x ** 2          # the bug

x = Tensor(rng.standard_normal((2, 3)), requires_grad=True)
right = gradcheck(lambda t: Cube.apply(t), [x])
wrong = gradcheck(lambda t: WrongCube.apply(t), [x])
print(right)
print(wrong)
assert right.ok and right.max_error < 1e-6
assert not wrong.ok
"""),
    md(r"""
Gradient checks need **float64**: in float32, $\varepsilon$ must be large (round-off grows like
$10^{-7}/\varepsilon$) and the truncation error $O(\varepsilon^2)$ grows with it, so the check
can no longer tell a small bug from noise. That is why `gradcheck` refuses float32 inputs:
"""),
    code(r"""
try:
    gradcheck(lambda t: Cube.apply(t), [Tensor(np.ones(3, dtype=np.float32), requires_grad=True)])
    raise AssertionError("gradcheck accepted float32")
except TypeError as e:
    print("TypeError:", e)
"""),
    md(r"""
## Summary

* Operations build a graph as they run; a `Function` holds one operation's forward and its
  local derivative (backward), right next to each other.
* `backward()` sorts the graph topologically (iteratively) and walks it in reverse, adding up
  every share of a gradient before passing it on. A reused node is exactly where a naive walk
  goes wrong.
* Broadcasting copies; the backward of a copy is a sum (`unbroadcast`).
* Finite differences in float64 check any backward pass, and catch a wrong one.

Next: **Lesson 3** derives the backward passes of the fused operations a Transformer needs.
"""),
]
