"""Lesson 3: deriving the backward passes of the fused operations."""

from lessons.cells import code, md

CELLS = [
    md(r"""
# Lesson 3 — Deriving the backward passes

A Transformer could be built from the elementary operations of lesson 2 alone, and autograd
would differentiate it. But softmax, layer norm, GELU and attention each make many small
operations, each saving its own intermediate arrays. tinymlm writes each of them as **one**
`Function` whose backward pass is derived by hand: fewer arrays kept, fewer passes over
memory, and a formula you can read.

For each one we derive the gradient on the page, look at the `Function` in
`tinymlm/nn/functional.py` that implements it, and check *that* Function by finite
differences in float64. (tinymlm also has fused Numba kernels for some of them; the last
section shows that they give the same numbers as the Functions printed here.)
Notation: $g = \partial \ell / \partial y$ is the gradient arriving at the output $y$; we want
$\partial \ell / \partial x$.
"""),
    code(r"""
import inspect
import numpy as np
import matplotlib.pyplot as plt

from tinymlm import Tensor
from tinymlm.gradcheck import gradcheck
import tinymlm.nn.functional as F

rng = np.random.default_rng(0)

def show(function):
    print(inspect.getsource(function))
"""),
    md(r"""
## 1. Softmax + cross-entropy: $(p - y)/M$

For one row of logits $x \in \mathbb{R}^V$ with target class $t$,
$$\ell = -\log p_t, \qquad p_j = \frac{e^{x_j}}{\sum_k e^{x_k}}
\quad\Longrightarrow\quad \ell = \log \sum_k e^{x_k} - x_t .$$
Differentiate the two terms: $\partial_j \log \sum_k e^{x_k} = e^{x_j}/\sum_k e^{x_k} = p_j$ and
$\partial_j x_t = [j = t] = y_j$ (the one-hot target). So
$$\frac{\partial \ell}{\partial x_j} = p_j - y_j .$$
The loss is the **mean** over the $M$ rows whose label is not $-100$, so each counted row gets
$(p - y)/M$ and each ignored row gets $0$. Note what did *not* appear: the softmax Jacobian.
Fusing softmax with the log cancels it, which is why frameworks offer `cross_entropy` on
logits rather than on probabilities.

The forward pass computes $\log\sum_k e^{x_k}$ as $m + \log\sum_k e^{x_k - m}$ with
$m = \max_k x_k$ (the *log-sum-exp trick*): every exponent is $\le 0$, so nothing overflows.
"""),
    code(r"""
show(F.CrossEntropy)
"""),
    code(r"""
logits = rng.standard_normal((6, 10))
labels = np.array([3, -100, 0, 9, -100, 5])
x = Tensor(logits, requires_grad=True)
F.CrossEntropy.apply(x, labels).backward()

p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
y = np.zeros_like(p)
counted = labels != -100
y[np.flatnonzero(counted), labels[counted]] = 1
expected = (p - y) * counted[:, None] / counted.sum()     # (p − y)/M, zero for ignored rows
np.testing.assert_allclose(x.grad, expected, rtol=1e-12, atol=1e-15)

result = gradcheck(lambda t: F.CrossEntropy.apply(t, labels), [Tensor(logits, requires_grad=True)])
print(result)
assert result.ok

# the log-sum-exp trick: logits of 1000 would overflow e^x, the loss is still exact
big = Tensor(np.array([[1000.0, 0.0, -1000.0]]))
print("loss with logits of ±1000:", F.CrossEntropy.apply(big, np.array([0])).item())
assert F.CrossEntropy.apply(big, np.array([0])).item() == 0.0
"""),
    md(r"""
## 2. Softmax on its own

Attention needs the softmax itself. With $p = \operatorname{softmax}(x)$,
$\partial p_i / \partial x_j = p_i(\delta_{ij} - p_j)$, so
$$\frac{\partial \ell}{\partial x_j} = \sum_i g_i\, p_i (\delta_{ij} - p_j)
= p_j \Big(g_j - \sum_i g_i p_i\Big).$$
One row-sum and two elementwise operations: the $V \times V$ Jacobian is never formed.
"""),
    code(r"""
show(F.Softmax.backward)
result = gradcheck(lambda t: F.softmax(t, -1), [Tensor(rng.standard_normal((4, 7)), requires_grad=True)])
print(result)
assert result.ok
"""),
    md(r"""
## 3. Layer norm

Over the last axis of size $N$: $\mu = \frac1N\sum_j x_j$, $\sigma^2 = \frac1N \sum_j (x_j-\mu)^2$,
$r = (\sigma^2 + \varepsilon)^{-1/2}$, $\hat x = (x - \mu)\, r$, and $y = \hat x \odot w + b$.

The parameters are easy: $\partial \ell/\partial b = \sum_{\text{rows}} g$ and
$\partial \ell/\partial w = \sum_{\text{rows}} g \odot \hat x$. For $x$, write $\hat g = g \odot w$
(the gradient reaching $\hat x$). Every $\hat x_i$ depends on every $x_j$ through $\mu$ and $r$:
$$\frac{\partial \mu}{\partial x_j} = \frac1N, \qquad
\frac{\partial r}{\partial x_j} = -\tfrac12 r^3 \frac{\partial \sigma^2}{\partial x_j}
= -\tfrac12 r^3 \cdot \tfrac{2}{N}(x_j - \mu) = -\frac{r^2}{N}\,\hat x_j ,$$
$$\frac{\partial \hat x_i}{\partial x_j} = r\Big(\delta_{ij} - \frac1N\Big) + (x_i - \mu)\frac{\partial r}{\partial x_j}
= r\Big(\delta_{ij} - \frac1N - \frac{\hat x_i \hat x_j}{N}\Big).$$
Contract with $\hat g$:
$$\frac{\partial \ell}{\partial x_j} = \sum_i \hat g_i \frac{\partial \hat x_i}{\partial x_j}
= r\Big(\hat g_j - \operatorname{mean}(\hat g) - \hat x_j \operatorname{mean}(\hat g \odot \hat x)\Big).$$
Only $\hat x$ and $r$ need to be saved from the forward pass.
"""),
    code(r"""
show(F.LayerNorm.backward)
x = Tensor(rng.standard_normal((3, 8)), requires_grad=True)
w = Tensor(rng.standard_normal(8), requires_grad=True)
b = Tensor(rng.standard_normal(8), requires_grad=True)
result = gradcheck(lambda x, w, b: F.LayerNorm.apply(x, w, b, eps=1e-5), [x, w, b])
print(result)
assert result.ok

# the formula, written out once more with NumPy, against the Function's backward
g = rng.standard_normal((3, 8))
xd = x.data
mu, var = xd.mean(-1, keepdims=True), xd.var(-1, keepdims=True)
r = 1 / np.sqrt(var + 1e-5)
xhat = (xd - mu) * r
ghat = g * w.data
by_formula = r * (ghat - ghat.mean(-1, keepdims=True) - xhat * (ghat * xhat).mean(-1, keepdims=True))
x.grad = None
F.LayerNorm.apply(x, w, b, eps=1e-5).backward(g)
np.testing.assert_allclose(x.grad, by_formula, rtol=1e-12)
"""),
    md(r"""
## 4. GELU

BERT's activation is the exact GELU, $y = x\,\Phi(x)$ with $\Phi$ the standard normal CDF,
$\Phi(x) = \tfrac12\big(1 + \operatorname{erf}(x/\sqrt2)\big)$. By the product rule, with
$\varphi(x) = e^{-x^2/2}/\sqrt{2\pi}$ the normal density ($\Phi' = \varphi$):
$$\frac{dy}{dx} = \Phi(x) + x\,\varphi(x).$$
(The "tanh" GELU is an approximation of $\Phi$: Google's original BERT code used it, and so
did GPT-2; Hugging Face calls it `gelu_new`. Hugging Face's `gelu`, the activation BERT
checkpoints' configs name, is the exact one, so tinymlm uses that, and matches it.)
"""),
    code(r"""
show(F.GELU)
result = gradcheck(F.GELU.apply, [Tensor(np.linspace(-3, 3, 13), requires_grad=True)])
print(result)
assert result.ok

xs = Tensor(np.linspace(-4, 4, 401), requires_grad=True)
F.GELU.apply(xs).sum().backward()
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(xs.data, F.GELU.apply(Tensor(xs.data)).data, label="GELU(x) = x Φ(x)")
ax.plot(xs.data, xs.grad, label="d/dx = Φ(x) + x φ(x)")
ax.plot(xs.data, np.maximum(xs.data, 0), ":", label="ReLU")
ax.legend(); ax.grid(alpha=0.3); plt.show()
# Unlike ReLU, GELU is not monotonic: it falls to a minimum near x = -0.75, so its slope is
# negative left of that point and positive right of it.
lowest = xs.data[np.argmin(F.GELU.apply(Tensor(xs.data)).data)]
print(f"GELU's minimum is at x = {lowest:.2f}")
assert -0.8 < lowest < -0.7
assert np.all(xs.grad[xs.data < -0.8] < 0) and np.all(xs.grad[xs.data > -0.7] > 0)
"""),
    md(r"""
## 5. Attention

For one head, with queries $Q$, keys $K$, values $V$ (each $S \times d$) and scale
$s = 1/\sqrt d$:
$$S = s\, Q K^\top + \text{mask}, \qquad P = \operatorname{softmax}_{\text{rows}}(S), \qquad O = P V .$$
Backward, from $g = \partial\ell/\partial O$, one product at a time:

* $O = PV$: $\;dV = P^\top g$, $\;dP = g V^\top$.
* softmax, row by row (section 2): $\;dS_{ij} = P_{ij}\big(dP_{ij} - \sum_k dP_{ik} P_{ik}\big)$.
* $S = s\,QK^\top$: $\;dQ = s\, dS\, K$, $\;dK = s\, dS^\top Q$.

The mask adds the most negative float to the scores of padded keys, so their weight
$P_{ij}$ is exactly $0$, and then so is every gradient that flows through them.
"""),
    code(r"""
show(F.Attention.backward)
B, h, S, d = 2, 2, 5, 4
q, k, v = (Tensor(rng.standard_normal((B, h, S, d)), requires_grad=True) for _ in range(3))
mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])      # the second sequence has 2 pads
scale = 1 / np.sqrt(d)
result = gradcheck(lambda q, k, v: F.Attention.apply(q, k, v, mask, scale=scale), [q, k, v])
print(result)
assert result.ok

# padded keys: no weight, so their keys and values get no gradient
for t in (q, k, v):
    t.grad = None
F.Attention.apply(q, k, v, mask, scale=scale).sum().backward()
assert np.all(k.grad[1, :, 3:] == 0) and np.all(v.grad[1, :, 3:] == 0)
print("padded keys and values receive exactly zero gradient")
"""),
    md(r"""
## 6. The fused kernels give the same numbers

The Functions above are the *reference path*. For speed, tinymlm also implements layer norm,
GELU, attention and cross-entropy as fused Numba kernels (`tinymlm/kernels/`): one pass over
memory instead of a chain of NumPy temporaries, with the same backward formulas. Which one
runs is chosen in one place, `tinymlm.kernels.select`, and `use_kernels("reference")` or
`use_kernels("numba")` forces either. Same inputs, both paths, forward and every gradient:
"""),
    code(r"""
from tinymlm.kernels import use_kernels

def values_and_grads(fn, arrays, mode):
    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    with use_kernels(mode):
        out = fn(*tensors)
    (out * out).sum().backward()
    return type(out._ctx).__name__, [out.data] + [t.grad for t in tensors]

cases = {
    "layer norm": (lambda x, w, b: F.layer_norm(x, 8, w, b, 1e-5),
                   [rng.standard_normal((3, 8)), rng.standard_normal(8), rng.standard_normal(8)]),
    "GELU": (F.gelu, [rng.standard_normal((4, 6))]),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, mask),
                  [rng.standard_normal((B, h, S, d)) for _ in range(3)]),
    "cross-entropy": (lambda x: F.cross_entropy(x, labels), [logits]),
}
for name, (fn, arrays) in cases.items():
    ref_name, ref = values_and_grads(fn, arrays, "reference")
    fused_name, fused = values_and_grads(fn, arrays, "numba")
    worst = max(np.abs(a - b).max() / np.abs(b).max() for a, b in zip(fused, ref))
    print(f"{name:14s} {ref_name:13s} vs {fused_name:18s} worst relative difference {worst:.1e}")
    assert fused_name.startswith("Fused") and not ref_name.startswith("Fused")
    assert worst < 1e-12
"""),
    md(r"""
## Summary

| operation | backward |
| --- | --- |
| cross-entropy on logits | $(p - y)/M$, zero for rows labelled $-100$ |
| softmax | $p \odot (g - \langle g, p\rangle)$ |
| layer norm | $r(\hat g - \overline{\hat g} - \hat x\, \overline{\hat g \hat x})$, $\;dw = \sum g\hat x$, $\;db = \sum g$ |
| GELU | $g\,(\Phi(x) + x\varphi(x))$ |
| attention | $dV = P^\top g$, $dS = P \odot (dP - \operatorname{rowsum}(dP \odot P))$, $dQ = s\,dS\,K$, $dK = s\,dS^\top Q$ |

Every row of this table passed a float64 gradient check above, and the fused kernels agree
with the reference Functions to float64 rounding. Next: **Lesson 4** assembles
these pieces into BERT's encoder and compares it with a real pretrained model.
"""),
]
