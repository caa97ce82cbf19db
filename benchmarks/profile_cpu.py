"""Where tinymlm's CPU training step goes, stage by stage.

    PYTHONPATH=. python benchmarks/profile_cpu.py [--sizes mini] [--dense] [--kernels auto]

Every Function's forward and backward (and AdamW.step) is wrapped in a timer for the duration
of the profile; a Function's time is charged to its stage (matmuls, attention, layer norm,
...). What no Function accounts for ("engine") is the autograd walk itself: topological sort,
gradient accumulation and the broadcasting undone between Functions. The timers cost a few
microseconds per call, far below the stages they measure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import build_tinymlm, make_batches, set_threads  # noqa: E402

# Function class name -> stage of the step.
STAGES = {
    "Linear": "matmuls (Linear)",
    "MatMul": "matmuls (Linear)",
    "Attention": "attention",
    "FusedAttention": "attention",
    "LayerNorm": "layer norm",
    "FusedLayerNorm": "layer norm",
    "GELU": "GELU",
    "FusedGELU": "GELU",
    "CrossEntropy": "softmax / cross-entropy",
    "FusedCrossEntropy": "softmax / cross-entropy",
    "Embedding": "embeddings (+ their gradients)",
    "FusedEmbedding": "embeddings (+ their gradients)",
    "Dropout": "dropout",
    "FusedDropout": "dropout",
    "GetItem": "indexing (predicted rows, q/k/v split)",
}


def _all_functions():
    from tinymlm.autograd import Function

    found, todo = [], [Function]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def profile_step(size: str, batch: int, seq: int, sparse: bool, steps: int = 3) -> dict:
    """Median seconds per stage (forward and backward apart) over ``steps`` profiled steps."""
    from tinymlm.optim import AdamW

    _, step = build_tinymlm(size, sparse=sparse)
    batches = make_batches(steps + 1, batch, seq)
    step(batches[-1])  # warm-up: compiles the kernels, allocates the optimizer state

    spent = defaultdict(float)
    originals = []

    def wrap(cls, method, label):
        original = cls.__dict__[method]

        def timed(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start

        originals.append((cls, method, original))
        setattr(cls, method, timed)

    for cls in _all_functions():
        stage = STAGES.get(cls.__name__, "other elementwise / shape ops")
        for method, part in (("forward", "fwd"), ("backward", "bwd")):
            if method in cls.__dict__:
                wrap(cls, method, (stage, part))
    wrap(AdamW, "step", ("optimizer (AdamW)", "-"))

    per_step, totals = [], []
    try:
        for b in batches[:steps]:
            spent.clear()
            start = time.perf_counter()
            step(b)
            total = time.perf_counter() - start
            totals.append(total)
            snapshot = dict(spent)
            snapshot[("engine and the rest", "-")] = total - sum(spent.values())
            per_step.append(snapshot)
    finally:
        for cls, method, original in originals:
            setattr(cls, method, original)

    keys = {k for s in per_step for k in s}
    median = {k: statistics.median(s.get(k, 0.0) for s in per_step) for k in keys}
    return {"total": statistics.median(totals), "stages": median}


def profile_markdown(sizes, batch: int, seq: int) -> str:
    lines = ["## Where tinymlm's step goes (profile)", ""]
    for size in sizes:
        for sparse in (False, True):
            prof = profile_step(size, batch, seq, sparse)
            name = "sparse (default)" if sparse else "dense (logits at every position)"
            lines += [
                f"### {size}, {name}: {prof['total'] * 1e3:.0f} ms per step",
                "",
                "| stage | forward (ms) | backward (ms) | share |",
                "|---|---:|---:|---:|",
            ]
            by_stage = defaultdict(lambda: [0.0, 0.0])
            for (stage, part), t in prof["stages"].items():
                by_stage[stage][0 if part in ("fwd", "-") else 1] += t
            for stage, (f, b) in sorted(by_stage.items(), key=lambda kv: -sum(kv[1])):
                share = (f + b) / prof["total"]
                lines.append(f"| {stage} | {f * 1e3:.1f} | {b * 1e3:.1f} | {share:.0%} |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="mini")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kernels", default="auto", choices=("auto", "reference", "numba"))
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import numba

    from tinymlm import kernels

    numba.set_num_threads(args.threads)
    kernels.set_kernels(args.kernels)
    print(f"load average {os.getloadavg()[0]:.1f}; kernels {args.kernels}")
    print(profile_markdown(args.sizes.split(","), args.batch, args.seq))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
