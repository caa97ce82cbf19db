"""The reuse property (``tests/reuse_property.py``) for the CUDA kernels, under the simulator.

Run by ``tests/test_fused_reuse.py`` in its own process: NUMBA_ENABLE_CUDASIM=1 must be set
before Numba is imported. The cross-entropy Functions take their GPU branch on NumPy arrays
(``SIMULATED_GPU``); attention runs the CUDA ``FusedAttention`` through the same entry point
``F.scaled_dot_product_attention`` uses on the GPU. That kernel takes float32 only, so its
check is in float32 (relative error 2e-5); the rest in float64 (1e-12). Exits non-zero,
naming each problem.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    sys.exit("run with NUMBA_ENABLE_CUDASIM=1 (the tests do this for you)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from reuse_property import problems  # noqa: E402

from tinymlm.kernels import attention, use_kernels  # noqa: E402
from tinymlm.kernels import cross_entropy as ce  # noqa: E402
from tinymlm.nn import functional as F  # noqa: E402

TARGETS = np.array([3, -100, 0, 6, -100, 2])
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # right padding, ragged


def reference(fn):
    def run(*xs):
        with use_kernels("reference"):
            return fn(*xs)

    return run


def main() -> int:
    ce.SIMULATED_GPU = True
    rng = np.random.default_rng(0)
    scale = 0.5
    cases = [
        ("cross_entropy", lambda x: ce.FusedCrossEntropy.apply(x, TARGETS),
         lambda x: F.cross_entropy(x, TARGETS), [(6, 9)], "FusedCrossEntropy", np.float64),
        ("linear_cross_entropy", lambda x, w, b: ce.FusedLinearCrossEntropy.apply(x, w, b, TARGETS),
         lambda x, w, b: F.linear_cross_entropy(x, w, b, TARGETS), [(6, 5), (9, 5), (9,)],
         "FusedLinearCrossEntropy", np.float64),
        ("attention", lambda q, k, v: attention.fused_attention_or_none(q, k, v, MASK, scale),
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, MASK, scale=scale),
         [(2, 2, 5, 4)] * 3, "FusedAttention", np.float32),
        ("attention_no_mask",
         lambda q, k, v: attention.fused_attention_or_none(q, k, v, None, scale),
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, None, scale=scale),
         [(1, 1, 3, 4)] * 3, "FusedAttention", np.float32),
        ("attention_causal",
         lambda q, k, v: attention.fused_attention_or_none(q, k, v, MASK, scale, is_causal=True),
         lambda q, k, v: F.scaled_dot_product_attention(q, k, v, MASK, scale=scale,
                                                        is_causal=True),
         [(2, 2, 5, 4)] * 3, "FusedAttention", np.float32),
    ]
    failed = 0
    for name, fused, ref, shapes, fused_type, dtype in cases:
        arrays = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
        rtol = 1e-12 if dtype == np.float64 else 2e-5
        found = problems(fused, reference(ref), arrays, fused_type, rtol)
        for problem in found:
            print(f"{name}: {problem}")
        failed += bool(found)
    print(f"checked {len(cases)} fused CUDA paths, {failed} with problems")
    if not model_logits_are_kept_and_reusable(rng):
        failed += 1
    return 1 if failed else 0


def model_logits_are_kept_and_reusable(rng) -> bool:
    """BertForMaskedLM with the CUDA cross-entropy kernel: out.logits survive backward, and a
    loss that uses them again gets the reference path's gradients (float64, 1e-12)."""
    from tinymlm import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ids = rng.integers(5, 40, (2, 6))
    labels = np.full((2, 6), -100)
    labels[0, [1, 3]], labels[1, 2] = ids[0, [1, 3]], ids[1, 2]
    state = {n: rng.standard_normal(p.shape) * 0.3
             for n, p in BertForMaskedLM(config).named_parameters()}
    mask = np.ones((2, 6), dtype=np.int64)
    mask[1, 4:] = 0  # right padding
    grads, ran = {}, {}
    for mode in ("numba", "reference"):
        model = BertForMaskedLM(config)
        for n, p in model.named_parameters():
            p.data = state[n].copy()
        with use_kernels(mode):
            out = model(ids, attention_mask=mask, labels=labels)
            ran[mode] = type(out.loss._ctx).__name__
            before = out.logits.numpy()
            (out.loss + 0.01 * (out.logits * out.logits).sum()).backward()
        if not np.array_equal(out.logits.data, before):
            print(f"model ({mode}): backward() changed out.logits")
            return False
        grads[mode] = {n: p.grad for n, p in model.named_parameters()}
    if ran != {"numba": "FusedCrossEntropy", "reference": "CrossEntropy"}:
        print(f"model: the runs used {ran}")
        return False
    scale = max(np.abs(g).max() for g in grads["reference"].values())
    worst = max(np.abs(grads["numba"][n] - g).max() / scale for n, g in grads["reference"].items())
    print(f"model with the CUDA cross-entropy: worst gradient difference {worst:.2e}")
    return worst <= 1e-12


if __name__ == "__main__":
    sys.exit(main())
