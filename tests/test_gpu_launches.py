"""benchmarks/gpu_launches.py counts what CuPy would launch: its counts of the optimizer and
the clipping equal the arithmetic in benchmarks/results/gpu_launches.md (here at a small
config: the counts depend only on the parameters, 42 of them, 16 with weight decay)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_counts_match_the_arithmetic():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_launches
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    found = gpu_launches.count_step(layers=2, hidden=128, batch=2, seq=8)
    n, decayed = found["parameters"], found["decayed"]
    assert (n, decayed) == (42, 16)
    launches = found["launches"]
    assert launches["AdamW.step"] == 14 * decayed + 13 * (n - decayed)
    assert launches["clip_grad_norm_"] == 2 * n + 8
    assert "zero_grad" not in launches  # setting .grad to None launches nothing
    model = sum(v for k, v in launches.items() if k.startswith("model forward + backward"))
    assert model > 0 and launches.get("model forward + backward / Attention", 0) == 2 * 19
