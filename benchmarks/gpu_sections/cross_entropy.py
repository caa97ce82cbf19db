"""GPU check, cross-entropy section: validate the fused kernels on the GPU, then time them.

``run(report, quick)`` is called by ``benchmarks/gpu_check.py``. It validates the CUDA kernels
(float32 at every block size, float64 at 512 and 1024; ragged V, ignored rows, outliers;
every mismatch recorded) against a float64 NumPy reference, then times forward + backward
with CUDA events at M in {4096, 16384}, V = 30522, float32, beside CuPy's plain path and
PyTorch's ``cross_entropy`` (TF32 off).
CuPy and PyTorch are imported inside ``run``, so importing this file needs neither.

Bytes: the forward reads the logits once (M·V·4 B); the backward reads them and writes the
gradient over them (2·M·V·4 B). Bandwidth is compared with a measured device-to-device copy.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100
V_BERT = 30522


def _reference(logits, targets, scale):
    x = logits.astype(np.float64)  # (M, V)
    m = x.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]  # (M,)
    valid = targets != IGNORE
    rows, t = np.arange(len(targets)), np.where(valid, targets, 0)
    loss = np.where(valid, lse - x[rows, t], 0.0)
    grad = np.exp(x - lse[:, None])
    grad[rows, t] -= 1.0
    grad *= np.where(valid, scale, 0.0)[:, None]
    return loss, lse, grad


def _inputs(cp, M, V, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((M, V)).astype(dtype)  # (M, V)
    if M:
        logits[np.arange(M), rng.integers(0, V, M)] += dtype(30)  # a large outlier per row
    targets = rng.integers(0, V, M).astype(np.int64)
    targets[::7] = IGNORE
    return logits, targets, cp.asarray(logits), cp.asarray(targets)


def _validate(cp, ce, section) -> list[str]:
    """Every block size, both dtypes, ragged shapes: every mismatch is recorded, not only the
    first (``section['mismatches']``), and ``section['validation_ok']`` says whether any was."""
    mismatches = section["mismatches"] = []  # filled as it goes: kept if the cap stops it
    section["validation_ok"] = False  # until every case has run

    def compare(what, got, want, tol):
        got = cp.asnumpy(got)
        if not np.allclose(got, want, rtol=tol, atol=tol):  # a NaN (unwritten) fails too
            finite = np.isfinite(got)
            err = float(np.abs(got[finite] - want[finite]).max()) if finite.any() else np.nan
            mismatches.append(f"{what}: max |err| {err:.1e}, {int((~finite).sum())} not finite")

    # float32 at every block size the lab and the library launch; float64 (validation only) at
    # the default and at 1024, where its registers are tightest: each (dtype, block) is two
    # kernels to compile, 1-3 s each, inside the section's time cap.
    blocks = {np.float32: (128, 256, 512, 1024), np.float64: (ce.DEFAULT_BLOCK, 1024)}
    for dtype, tol in ((np.float32, 2e-5), (np.float64, 1e-11)):
        for M, V in ((257, V_BERT), (9, 1001), (3, 5), (0, 17)):
            logits, targets, d_logits, d_targets = _inputs(cp, M, V, dtype, seed=M + V)
            want_loss, want_lse, want_grad = _reference(logits, targets, 0.25)
            for block in blocks[dtype]:
                where = f"M={M} V={V} {dtype.__name__} block={block}"
                try:
                    loss, lse = ce.cuda_forward(d_logits, d_targets, block=block)
                    grad = cp.full_like(d_logits, np.nan)  # poisoned
                    ce.cuda_backward(d_logits, d_targets, lse, 0.25, out=grad, block=block)
                    in_place = d_logits.copy()
                    ce.cuda_backward(in_place, d_targets, lse, 0.25, out=in_place, block=block)
                except Exception as exc:  # a launch failure is one more mismatch
                    mismatches.append(f"{where}: {type(exc).__name__}: {exc}")
                    continue
                for what, got, want in (
                    ("loss", loss, want_loss),
                    ("lse", lse, want_lse),
                    ("grad", grad, want_grad),
                    ("grad in place", in_place, want_grad),
                ):
                    compare(f"{what} {where}", got, want, tol)
    # Through the autograd Function: mean loss and gradient, and the all-ignored batch.
    from tinymlm import Tensor

    logits, targets, d_logits, _ = _inputs(cp, 64, V_BERT, np.float32, seed=1)
    x = Tensor(d_logits, requires_grad=True)
    loss = ce.FusedCrossEntropy.apply(x * 1.0, targets)
    loss.backward()
    count = int((targets != IGNORE).sum())
    want_loss, _, want_grad = _reference(logits, targets, 1.0 / count)
    compare("Function loss", loss.data, np.float64(want_loss.sum() / count), 1e-5)
    compare("Function gradient", x.grad, want_grad, 2e-5)
    none = ce.FusedCrossEntropy.apply(Tensor(d_logits[:4]), cp.full(4, IGNORE))
    compare("Function, every row ignored", none.data, np.float64(0.0), 0.0)

    section["validation_ok"] = not mismatches
    if mismatches:
        return [f"cross-entropy: {len(mismatches)} mismatches FAILED", *mismatches[:20]]
    return ["cross-entropy: validated (float32 blocks 128-1024, float64 512 and 1024, the "
            "Function): ok"]


def _time_ms(cp, fn, repeats):
    fn()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def _plain_cupy(cp, logits, targets):
    """The reference path's math on CuPy: log-softmax, gathered loss, softmax - onehot."""
    valid = targets != IGNORE
    count = cp.maximum(valid.sum(), 1)
    shifted = logits - logits.max(axis=1, keepdims=True)  # (M, V)
    logp = shifted - cp.log(cp.exp(shifted).sum(axis=1, keepdims=True))  # (M, V)
    rows, t = cp.arange(len(targets)), cp.where(valid, targets, 0)
    loss = -(logp[rows, t] * valid).sum() / count
    grad = cp.exp(logp)  # (M, V)
    grad[rows, t] -= 1
    grad *= (valid / count).astype(logits.dtype)[:, None]
    return loss, grad


def run(report: dict, quick: bool) -> list[str]:
    import cupy as cp

    from tinymlm.kernels import cross_entropy as ce

    section = report.setdefault("cross_entropy", {})
    lines = _validate(cp, ce, section)
    if not section["validation_ok"]:
        return lines + ["no timings: validation FAILED"]
    repeats = 5 if quick else 20

    # Measured copy bandwidth (read + write), the yardstick for a streaming kernel.
    a = cp.empty(256 * 2**20, np.float32)
    b = cp.empty_like(a)
    copy_ms = _time_ms(cp, lambda src=a, dst=b: cp.copyto(dst, src), repeats)
    copy_gbs = 2 * a.nbytes / copy_ms / 1e6
    a = b = None  # free the 2 GB before the kernels run
    section["copy_GBps"] = copy_gbs
    lines.append(f"device-to-device copy: {copy_gbs:.0f} GB/s (read + write)")

    try:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    except ImportError:
        torch = None

    lines += [
        "| M | V | fused fwd ms (GB/s) | fused bwd ms (GB/s) | fused total | CuPy plain | "
        "PyTorch fwd+bwd | vs PyTorch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for M in (4096,) if quick else (4096, 16384):
        _, _, logits, targets = _inputs(cp, M, V_BERT, np.float32, seed=M)
        work = logits.copy()
        scale = cp.asarray([1.0 / M], np.float32)
        loss_rows, lse = ce.cuda_forward(logits, targets)
        fwd = _time_ms(cp, lambda lg=logits, t=targets: ce.cuda_forward(lg, t), repeats)
        bwd = _time_ms(
            cp,
            lambda w=work, t=targets, c=lse, k=scale: ce.cuda_backward(w, t, c, k, out=w),
            repeats,
        )
        gb = logits.nbytes / 1e9
        plain = _time_ms(cp, lambda lg=logits, t=targets: _plain_cupy(cp, lg, t), repeats)
        row = {
            "M": M,
            "V": V_BERT,
            "fused_forward_ms": fwd,
            "fused_backward_ms": bwd,
            "forward_GBps": gb / fwd * 1e3,
            "backward_GBps": 2 * gb / bwd * 1e3,
            "forward_fraction_of_copy": gb / fwd * 1e3 / copy_gbs,
            "backward_fraction_of_copy": 2 * gb / bwd * 1e3 / copy_gbs,
            "cupy_plain_ms": plain,
        }
        torch_ms = float("nan")
        if torch is not None:
            tl = torch.from_dlpack(logits).clone().requires_grad_(True)
            tt = torch.from_dlpack(targets)

            def torch_step(tl=tl, tt=tt):
                tl.grad = None
                torch.nn.functional.cross_entropy(tl, tt, ignore_index=IGNORE).backward()

            torch_ms = _time_ms(cp, torch_step, repeats)
            row["torch_ms"] = torch_ms
        section[f"M{M}"] = row
        total = fwd + bwd
        lines.append(
            f"| {M} | {V_BERT} | {fwd:.3f} ({row['forward_GBps']:.0f}) | "
            f"{bwd:.3f} ({row['backward_GBps']:.0f}) | {total:.3f} | {plain:.3f} | "
            f"{torch_ms:.3f} | {torch_ms / total:.2f}× |"
        )
        del work, loss_rows, lse
    return lines
