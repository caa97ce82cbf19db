"""Lesson 6: on the GPU and inside the kernels."""

from lessons.cells import code, md

CELLS = [
    md(r"""
# Lesson 6 — On the GPU and inside the kernels

tinymlm runs the same model code on a GPU through **CuPy**: every operation asks its inputs
for their array module (`xp`, NumPy or CuPy) instead of importing NumPy. On top of that, two
hot paths have hand-written **Numba CUDA kernels**: the fused softmax + cross-entropy, and
fused attention (FlashAttention-2 style). This lesson explains the ideas inside those kernels
— the log-sum-exp trick, online softmax, tiles, recomputation in backward — and *runs the very
kernels* on small inputs with **Numba's CUDA simulator**, which executes CUDA kernels in Python
on the CPU, thread by thread. No GPU needed.

The simulator must be switched on before Numba is first imported, so it is the first line:
"""),
    code(r"""
import os
os.environ["NUMBA_ENABLE_CUDASIM"] = "1"       # before numba is imported (tinymlm imports it)

import glob
import numpy as np
from IPython.display import Markdown, display

from tinymlm import Tensor, backend
from tinymlm.kernels import attention as fused_attention
from tinymlm.kernels import cross_entropy as fused_ce
import tinymlm.nn.functional as F

rng = np.random.default_rng(0)
"""),
    md(r"""
## 1. The same code on CuPy

`backend.get_array_module(a)` returns `cupy` for a CuPy array and `numpy` otherwise; the model
code uses it everywhere, so `model.to("cuda")` is all it takes. On a machine with a CUDA GPU
and CuPy (`pip install -e ".[cuda12]"`), this cell runs a tiny model on both devices and
compares them; elsewhere it says so.
"""),
    code(r"""
print("array module of a NumPy array:", backend.get_array_module(np.zeros(3)).__name__)
try:
    import cupy
    gpu = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:
    gpu = False
if gpu:
    # the simulator is on in this kernel, so compare the plain CuPy path (kernels='reference')
    from tinymlm import BertConfig, BertForMaskedLM
    from tinymlm.kernels import use_kernels
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    model = BertForMaskedLM(config).eval()
    ids = rng.integers(5, 50, size=(2, 7))
    with use_kernels("reference"):
        cpu_logits = model(ids).logits.numpy()
        gpu_logits = model.to("cuda")(ids).logits.numpy()
    print("largest CPU/GPU difference:", np.abs(cpu_logits - gpu_logits).max())
    assert np.allclose(cpu_logits, gpu_logits, atol=1e-4)
else:
    print("note: no CUDA GPU with CuPy here; the rest of the lesson runs in the simulator")
"""),
    md(r"""
## 2. The log-sum-exp trick

Cross-entropy needs $\log \sum_j e^{x_j}$. In float32, $e^{x}$ overflows to `inf` for
$x > 88.7$. Subtracting the maximum $m$ first changes nothing mathematically and keeps every
exponent $\le 0$:
$$\log\sum_j e^{x_j} = m + \log \sum_j e^{x_j - m}.$$
"""),
    code(r"""
x = np.array([100.0, 90.0, 80.0], dtype=np.float32)
with np.errstate(over="ignore"):
    naive = np.log(np.exp(x).sum())
m = x.max()
stable = m + np.log(np.exp(x - m).sum())
print(f"naive {naive}, with the trick {stable:.6f}")
assert np.isinf(naive) and np.isclose(stable, 100.0000454, rtol=1e-6)
"""),
    md(r"""
## 3. Online softmax

The trick needs the maximum *before* the sum — two passes over a row. A GPU kernel wants one:
every extra pass re-reads the row from memory, and memory, not arithmetic, is what these
kernels wait for. **Online softmax** keeps a running maximum $m$ and a running sum $s$ of
$e^{x_j - m}$; when a new element raises the maximum to $m'$, the sum so far is rescaled:
$$s \leftarrow s\, e^{m - m'} + e^{x_j - m'}, \qquad m \leftarrow m'.$$
At the end $\log\sum_j e^{x_j} = m + \log s$. The same update works on whole *tiles* of
elements, and on (sum, output) pairs in attention, where the output accumulated so far is
rescaled by the same $e^{m - m'}$. Here it is, one element at a time, as each thread of the
kernels does it:
"""),
    code(r"""
row = rng.standard_normal(1000) * 5
m, s, trace = -np.inf, 0.0, []
for value in row:
    new_m = max(m, value)
    s = s * np.exp(m - new_m) + np.exp(value - new_m)
    m = new_m
    trace.append(m + np.log(s))
exact = row.max() + np.log(np.exp(row - row.max()).sum())
print(f"online {trace[-1]:.12f}   two-pass {exact:.12f}")
assert abs(trace[-1] - exact) < 1e-9
"""),
    md(r"""
## 4. The fused cross-entropy kernel

One CUDA block per row of logits. Forward, **one pass**: each thread folds its strided slice of
the row into its own $(m, s)$ pair, then the block merges the pairs (the same rescaling rule)
and writes only the per-row loss and $L_i = \log\sum_j e^{x_{ij}}$ — $M$ numbers, not $M \times V$.
Backward, one more pass: $(e^{x_{ij} - L_i} - [j = t_i])\, g/N$, written **over the logits**
(their buffer becomes the gradient, so the loss needs no $M \times V$ memory of its own).

Run the real kernels in the simulator on a small batch with a few large outliers (so the
softmax is far from uniform, which a test needs to mean anything), and compare with the
reference `Function` of lesson 3 in float64:
"""),
    code(r"""
M, V = 6, 50
logits = rng.standard_normal((M, V)).astype(np.float32)
logits[np.arange(M), rng.integers(0, V, M)] += 12.0                 # outliers
targets = rng.integers(0, V, M)
targets[2] = -100                                                    # one ignored row

loss_rows, lse = fused_ce.cuda_forward(logits, targets, block=32)   # the CUDA kernel, simulated
count = (targets != -100).sum()
grad = fused_ce.cuda_backward(logits, targets, lse, np.float32(1.0 / count), block=32)

x64 = Tensor(logits.astype(np.float64), requires_grad=True)
reference = F.CrossEntropy.apply(x64, targets)
reference.backward()
print(f"kernel loss {loss_rows.sum() / count:.7f}   reference {reference.item():.7f}")
print("largest gradient difference:", np.abs(grad - x64.grad).max())
assert abs(loss_rows.sum() / count - reference.item()) < 1e-5
np.testing.assert_allclose(grad, x64.grad, atol=1e-6)
assert np.all(grad[2] == 0)                                          # the ignored row
"""),
    md(r"""
## 5. The fused attention kernel (FlashAttention-2)

Plain attention materialises the $S \times S$ score matrix for every head — memory that grows
with the square of the sequence. The fused kernel never stores it:

* **Tiles.** A block owns `block_q` query rows (one thread per row) and walks the keys in tiles
  of `block_k`, staged in fast on-chip shared memory so that each key and value is read from
  global memory once per block instead of once per row.
* **Online softmax** over the tiles, with the output accumulator rescaled by $e^{m - m'}$
  whenever the running maximum grows; the division by the sum happens once at the end.
* It saves only $L_i = m_i + \log s_i$ (one float per row) for the backward pass.
* **Recomputation in backward.** Instead of storing $P$, the backward kernels rebuild it tile by
  tile from $Q$, $K$ and $L$: $P_{ij} = e^{s\,q_i\cdot k_j - L_i}$. First
  $D_i = \sum_j P_{ij}\,dP_{ij} = dO_i \cdot O_i$ (one dot product per row), then one kernel per
  key block accumulates $dK$ and $dV$ and one per query block accumulates $dQ$, using
  $dS_{ij} = P_{ij}(dP_{ij} - D_i)$ from lesson 3. Every output element has one owner: no
  atomics, a deterministic result.

Small tiles (8 × 8) on a sequence of 20 make several tiles per row, with padding:
"""),
    code(r"""
B, H, S, d = 2, 2, 20, 8
q, k, v = (rng.standard_normal((B, H, S, d)).astype(np.float32) for _ in range(3))
k[:, :, 1::5] *= 4.0                                                 # a few large scores
lengths = np.array([20, 13])                                         # the second sequence is padded
scale = 1 / np.sqrt(d)
grad_out = rng.standard_normal((B, H, S, d)).astype(np.float32)

out, lse = fused_attention.attention_forward(q, k, v, lengths, scale, block_q=8, block_k=8)
dq, dk, dv = fused_attention.attention_backward(q, k, v, out, lse, grad_out, lengths, scale,
                                                block_q=8, block_k=8)

mask = (np.arange(S)[None, :] < lengths[:, None]).astype(np.int64)   # (B, S)
q64, k64, v64 = (Tensor(a.astype(np.float64), requires_grad=True) for a in (q, k, v))
ref = F.Attention.apply(q64, k64, v64, mask, scale=scale)
ref.backward(grad_out.astype(np.float64))
for name, ours, theirs in [("out", out, ref.data), ("dq", dq, q64.grad),
                           ("dk", dk, k64.grad), ("dv", dv, v64.grad)]:
    error = np.abs(ours - theirs).max()
    print(f"{name}: largest difference from the float64 reference {error:.1e}")
    assert error < 1e-4, name
"""),
    md(r"""
## 6. Benchmarks

The kernels and the training step are timed against PyTorch in `benchmarks/`, and each
benchmark writes its tables, with the machine, date and commit, to `benchmarks/results/` as
Markdown. The cell below reads those tables back (a Markdown table is a header row, a rule and
rows of cells separated by `|`) and draws the two that are easier seen than read. Run the
benchmarks on your own machine (and `benchmarks/gpu_check.py` on a GPU) and rerun this cell to
see yours.
"""),
    code(r"""
import matplotlib.pyplot as plt

RESULTS = "../benchmarks/results"

def markdown_tables(path):
    # every table of a Markdown file, as a list of rows (dicts: column -> cell text)
    tables, rows, header = [], None, None
    for line in open(path, encoding="utf-8").read().splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header, rows = cells, []
            elif not set("".join(cells)) <= set("-: "):      # skip the |---|---:| rule
                rows.append(dict(zip(header, cells)))
        elif header is not None:
            tables.append(rows)
            header = None
    return tables

def number(cell):
    # '1,373' -> 1373.0, '4.04×' -> 4.04, '**0.5**' -> 0.5
    return float(cell.strip("*× ").replace(",", ""))

cpu_files = sorted(glob.glob(f"{RESULTS}/cpu_*.md"))
ce_file = f"{RESULTS}/cross_entropy_cpu.md"
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))

if cpu_files:   # one training step at B=32, S=128: tinymlm (dense, sparse) and PyTorch
    steps = markdown_tables(cpu_files[-1])[0]
    sizes = list(dict.fromkeys(r["size"] for r in steps))
    contenders = list(dict.fromkeys(r["contender"] for r in steps))
    width = 0.8 / len(contenders)
    for i, contender in enumerate(contenders):
        ms = [number(r["step (ms)"]) for size in sizes for r in steps
              if r["size"] == size and r["contender"] == contender]
        left.bar(np.arange(len(sizes)) + i * width, ms, width, label=contender)
    left.set_xticks(np.arange(len(sizes)) + width * (len(contenders) - 1) / 2, sizes)
    left.set_ylabel("ms per training step (lower is better)")
    left.set_title(os.path.basename(cpu_files[-1]))
    left.legend()
    ratio = {r["contender"]: number(r["step vs PyTorch"]) for r in steps if r["size"] == "tiny"}
    print("tiny BERT, one step, time relative to PyTorch:", ratio)
    assert ratio["pytorch"] == 1.0

if os.path.exists(ce_file):     # fused cross-entropy vs the NumPy reference
    ce = markdown_tables(ce_file)[0]
    mv = [number(r["M·V"]) for r in ce]
    speedup = [number(r["speed-up"]) for r in ce]
    right.semilogx(mv, speedup, "o")
    right.axhline(1.0, color="gray", lw=0.8)
    right.set_xlabel("M·V (rows × vocabulary)")
    right.set_ylabel("speed-up of the fused kernel")
    right.set_title("softmax + cross-entropy, CPU")
    assert all(s > 1 for s in speedup), "the fused kernel should beat the reference everywhere"
plt.tight_layout()
plt.show()

gpu_files = sorted(glob.glob(f"{RESULTS}/gpu_check*.md"))
for path in gpu_files:
    display(Markdown(open(path, encoding="utf-8").read()))
if not gpu_files:
    print("no GPU results yet: run python benchmarks/gpu_check.py --out DIR on a GPU")
"""),
    md(r"""
## Summary

* One model code path: the array module of the inputs decides NumPy or CuPy.
* The log-sum-exp trick keeps exponentials finite; online softmax computes it in one pass by
  rescaling the running sum when the maximum grows.
* Fused cross-entropy: one pass forward, one backward, gradient written over the logits.
* Fused attention: tiles in shared memory, online softmax, only $L$ saved, $P$ recomputed in
  backward — no $S \times S$ matrix in memory.
* Both kernels, run in the simulator, match the float64 reference.
"""),
]
