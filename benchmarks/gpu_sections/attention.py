"""GPU check, attention section: validate the fused kernels, then time them beside baselines.

``run(report, quick)`` (called by ``benchmarks/gpu_check.py``; also ``PYTHONPATH=. python
benchmarks/gpu_sections/attention.py [--quick]`` on its own) does, in order:

1. Validation on the GPU against a float64 NumPy reference: forward output and the three
   gradients, head dims 32 and 64, S = 300 (not a multiple of any tile), ragged right padding,
   the strided (B, H, S, d) views the attention layer makes, outputs NaN-poisoned first.
2. Forward + backward time (CUDA events, median of repeats after a warm-up) and peak extra
   memory at B = 32, heads = 12, d = 64, S in {128, 512, 2048}, every sequence ragged, for:
   the fused Numba kernels; the CuPy cuBLAS + softmax path (the reference path's math) with
   TF32 off and on; PyTorch's ``scaled_dot_product_attention`` in float32 with a padding mask.
   TFLOP/s counts 4 B H S^2 d for the forward and 2.5 times that for the backward, against
   the card's fp32 (non-tensor-core) peak.

Peak memory: for CuPy, the memory pool's high-water mark (its cache is emptied first, so
``total_bytes`` after the run is the most it held at once) less the inputs; for PyTorch,
``torch.cuda.max_memory_allocated`` less the inputs.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

FP32_PEAK_TFLOPS = {"H100": 67.0, "H200": 67.0, "A100": 19.5}  # FFMA, no tensor cores
SHAPE = {"batch": 32, "heads": 12, "dim": 64}
LENGTHS = (128, 512, 2048)


# ----------------------------------------------------------------------------------------------
# Reference and baselines
# ----------------------------------------------------------------------------------------------


def reference(q, k, v, grad_out, lengths, scale):
    """float64 NumPy: (out, dq, dk, dv) with right padding (rows keep at least one key)."""
    q, k, v, grad_out = (a.astype(np.float64) for a in (q, k, v, grad_out))
    real = np.arange(q.shape[2])[None, :] < np.asarray(lengths)[:, None]  # (B, S)
    scores = np.where(real[:, None, None, :], scale * q @ k.swapaxes(-1, -2), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)  # (B, H, S, S)
    dp = grad_out @ v.swapaxes(-1, -2)
    ds = probs * (dp - (probs * dp).sum(-1, keepdims=True))
    return (
        probs @ v,
        scale * ds @ k,
        scale * ds.swapaxes(-1, -2) @ q,
        probs.swapaxes(-1, -2) @ grad_out,
    )


def cupy_attention_fwd_bwd(cp, q, k, v, grad_out, mask, scale):
    """The reference path's math on CuPy: cuBLAS batched matmuls + an elementwise softmax."""
    penalty = (1 - mask.astype(cp.float32)) * np.finfo(np.float32).min  # (B, S)
    scores = (q @ k.swapaxes(-1, -2)) * np.float32(scale)  # (B, H, S, S)
    scores += penalty[:, None, None, :]
    scores -= scores.max(axis=-1, keepdims=True)
    p = cp.exp(scores, out=scores)
    p /= p.sum(axis=-1, keepdims=True)
    out = p @ v  # (B, H, S, d)
    dv = p.swapaxes(-1, -2) @ grad_out
    dp = grad_out @ v.swapaxes(-1, -2)  # (B, H, S, S)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    dq = (ds @ k) * np.float32(scale)
    dk = (ds.swapaxes(-1, -2) @ q) * np.float32(scale)
    return out, dq, dk, dv


def set_cupy_tf32(enabled: bool) -> None:
    """Switch CuPy's float32 matmuls between plain fp32 and TF32 tensor cores."""
    from cupy._core import _routines_linalg as linalg

    tf32 = getattr(linalg, "COMPUTE_TYPE_TF32", 7)
    default = getattr(linalg, "COMPUTE_TYPE_DEFAULT", 1)
    linalg.set_compute_type(np.float32, tf32 if enabled else default)


# ----------------------------------------------------------------------------------------------
# Measurement helpers
# ----------------------------------------------------------------------------------------------


def cuda_ms(cp, fn, repeats: int) -> float:
    """Median milliseconds of fn() timed with CUDA events, after one warm-up call."""
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def cupy_peak_mb(cp, fn) -> float:
    """The most memory the CuPy pool held at once during fn(), beyond what it held before."""
    pool = cp.get_default_memory_pool()
    cp.cuda.Device().synchronize()
    pool.free_all_blocks()
    before = pool.total_bytes()
    fn()
    cp.cuda.Device().synchronize()
    return (pool.total_bytes() - before) / 2**20


def ragged_lengths(rng, batch, seq):
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    lengths[0] = seq
    return lengths


# ----------------------------------------------------------------------------------------------
# The section
# ----------------------------------------------------------------------------------------------


def validate(cp, fused, lines, section) -> bool:
    rng = np.random.default_rng(0)
    ok = True
    fused.POISON = True  # an element no thread writes stays NaN and fails the comparison
    try:
        for dim in (32, 64):
            batch, heads, seq = 4, 3, 300
            # (B, S, H, d) buffers viewed as (B, H, S, d), as the attention layer makes them
            q, k, v = (
                cp.asarray(
                    rng.standard_normal((batch, seq, heads, dim), dtype=np.float32)
                ).transpose(0, 2, 1, 3)
                for _ in range(3)
            )
            k[:, :, 1::7, :] *= np.float32(4.0)  # a few large logits per row
            grad_out = cp.asarray(rng.standard_normal((batch, heads, seq, dim), dtype=np.float32))
            lengths = ragged_lengths(rng, batch, seq)
            scale = 1.0 / math.sqrt(dim)
            out, lse = fused.attention_forward(q, k, v, cp.asarray(lengths), scale)
            grads = fused.attention_backward(
                q, k, v, out, lse, grad_out, cp.asarray(lengths), scale
            )
            want = reference(*(a.get() for a in (q, k, v, grad_out)), lengths, scale)
            for name, got, expected in zip(
                ("out", "dq", "dk", "dv"), (out, *grads), want, strict=True
            ):
                got = got.get()
                err = float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))
                passed = bool(np.isfinite(got).all() and err <= 3e-5)
                ok &= passed
                section["validation"][f"d{dim}_{name}"] = {"max_rel_err": err, "ok": passed}
                verdict = "ok" if passed else "FAILED"
                lines.append(f"  validate d={dim} {name:3s}: max rel err {err:.1e} {verdict}")
        ok &= validate_dispatch(cp, fused, lines, section)
    finally:
        fused.POISON = False
    return ok


def validate_dispatch(cp, fused, lines, section) -> bool:
    """F.scaled_dot_product_attention's kernel path against its reference path, on CuPy."""
    try:
        from tinymlm.autograd import Tensor
        from tinymlm.nn.functional import Attention
    except ImportError as exc:
        lines.append(f"  dispatch check skipped: {exc}")
        return True
    rng = np.random.default_rng(1)
    q, k, v, grad_out = (
        cp.asarray(rng.standard_normal((3, 4, 77, 64), dtype=np.float32)) for _ in range(4)
    )
    mask = cp.asarray(np.arange(77)[None, :] < np.array([77, 40, 1])[:, None]).astype(cp.int64)
    results = []
    for apply in (fused.fused_attention_or_none, lambda *a: Attention.apply(*a[:4], scale=a[4])):
        tensors = [Tensor(a.copy(), requires_grad=True) for a in (q, k, v)]
        out = apply(*tensors, mask, 0.125)
        out.backward(grad_out)
        results.append([out.data] + [t.grad for t in tensors])
    err = max(float(cp.abs(a - b).max()) for a, b in zip(*results, strict=True))
    passed = err <= 3e-5
    section["validation"]["dispatch_vs_reference_path"] = {"max_abs_err": err, "ok": passed}
    lines.append(
        f"  kernel path vs reference path (out, dq, dk, dv): max abs err {err:.1e} "
        f"{'ok' if passed else 'FAILED'}"
    )
    return passed


def time_one_length(cp, fused, seq, repeats, peak_tflops, lines, section):
    batch, heads, dim = SHAPE["batch"], SHAPE["heads"], SHAPE["dim"]
    rng = np.random.default_rng(seq)
    q, k, v, grad_out = (
        cp.asarray(rng.standard_normal((batch, heads, seq, dim), dtype=np.float32))
        for _ in range(4)
    )
    lengths = ragged_lengths(rng, batch, seq)
    lengths_dev = cp.asarray(lengths, dtype=cp.int32)
    mask = cp.asarray(np.arange(seq)[None, :] < lengths[:, None])  # (B, S) bool
    scale = 1.0 / math.sqrt(dim)
    flops = 3.5 * 4 * batch * heads * seq * seq * dim  # forward + backward (2.5x forward)

    def fused_step():
        out, lse = fused.attention_forward(q, k, v, lengths_dev, scale)
        return fused.attention_backward(q, k, v, out, lse, grad_out, lengths_dev, scale)

    rows = {}
    rows["numba fused"] = (cuda_ms(cp, fused_step, repeats), cupy_peak_mb(cp, fused_step))
    for tf32 in (False, True):
        set_cupy_tf32(tf32)
        step = lambda: cupy_attention_fwd_bwd(cp, q, k, v, grad_out, mask, scale)  # noqa: E731
        try:
            rows[f"cupy cuBLAS+softmax tf32={'on' if tf32 else 'off'}"] = (
                cuda_ms(cp, step, repeats),
                cupy_peak_mb(cp, step),
            )
        except cp.cuda.memory.OutOfMemoryError:
            rows[f"cupy cuBLAS+softmax tf32={'on' if tf32 else 'off'}"] = (math.nan, math.inf)
        finally:
            set_cupy_tf32(False)
            cp.get_default_memory_pool().free_all_blocks()
    torch_row = time_torch(q, k, v, grad_out, mask, repeats)
    if torch_row is not None:
        rows["torch sdpa fp32 (mem-efficient)"] = torch_row

    # what kernels="auto" (the trainer's default) picks for this shape, by its own timing
    choice = fused.measured_choices.get((batch, heads, seq, dim, "float32"))
    if choice is None:
        fused.fused_attention_is_faster(q)
        choice = fused.measured_choices[(batch, heads, seq, dim, "float32")]
    section.setdefault("auto_choice", {})[seq] = choice
    picked = "fused" if choice["fused"] else "reference"
    lines.append(f"  S={seq:5d} kernels=auto picks the {picked} path"
                 f" (its own timing: fused {choice['fused_ms']:.3f} ms, reference "
                 f"{choice['reference_ms']:.3f} ms, no padding)")
    for name, (ms, peak_mb) in rows.items():
        tflops = flops / ms / 1e9
        share = f"{100 * tflops / peak_tflops:5.1f}%" if peak_tflops else "   n/a"
        section["timings"].append(
            {"S": seq, "impl": name, "ms": ms, "tflops": tflops, "peak_extra_mb": peak_mb}
        )
        lines.append(
            f"  S={seq:5d} {name:34s} {ms:9.3f} ms {tflops:7.2f} TFLOP/s {share} "
            f"peak +{peak_mb:9.1f} MB"
        )


def time_torch(q, k, v, grad_out, mask, repeats):
    """PyTorch's SDPA, float32, boolean key mask (True = attend); None without CUDA torch."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    result = _time_torch(torch, q, k, v, grad_out, mask, repeats)
    torch.cuda.empty_cache()  # give the cached blocks back before CuPy's next, larger run
    return result


def _time_torch(torch, q, k, v, grad_out, mask, repeats):
    tq, tk, tv = (torch.from_dlpack(a.copy()).requires_grad_() for a in (q, k, v))
    tg = torch.from_dlpack(grad_out)
    tmask = torch.from_dlpack(mask.astype("uint8")).bool()[:, None, None, :]  # (B, 1, 1, S)

    def step():
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask)
        return torch.autograd.grad(out, (tq, tk, tv), tg)

    step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    return float(np.median(times)), peak


def run(report: dict, quick: bool) -> list[str]:
    """Validate, then time; fills ``report["attention"]`` and returns the table's lines."""
    import cupy as cp

    from tinymlm.kernels import attention as fused

    name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    peak = next((p for card, p in FP32_PEAK_TFLOPS.items() if card in name), None)
    section = report.setdefault("attention", {})
    section.update(
        {"device": name, "fp32_peak_tflops": peak, "shape": SHAPE, "validation": {}, "timings": []}
    )
    lines = [f"attention (fused Numba kernels) on {name}"]
    started = time.perf_counter()
    section["validation_ok"] = validate(cp, fused, lines, section)
    if not section["validation_ok"]:
        lines.append("  validation FAILED: no timings")
        return lines
    lines.append(
        f"  forward+backward, B={SHAPE['batch']} heads={SHAPE['heads']} d={SHAPE['dim']}, "
        "ragged right padding; TFLOP/s = 3.5 * 4 B H S^2 d / time; % of the fp32 peak"
    )
    repeats = 3 if quick else 10
    for seq in LENGTHS:
        time_one_length(cp, fused, seq, repeats, peak, lines, section)
    section["seconds"] = time.perf_counter() - started
    return lines


if __name__ == "__main__":
    print("\n".join(run({}, quick="--quick" in sys.argv)))
