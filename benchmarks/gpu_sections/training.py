"""GPU check, training section: a tinymlm training step beside Hugging Face's BertForMaskedLM.

``run(report, quick)`` (called by ``benchmarks/gpu_check.py``; also ``PYTHONPATH=. python
benchmarks/gpu_sections/training.py [--quick]`` on its own) times one optimizer step (forward,
backward, AdamW update, zero_grad) of BertForMaskedLM at the bert-mini (4 layers, hidden 256)
and bert-base (12 layers, hidden 768) shapes: B = 32, S = 128, vocabulary 30522, float32,
intermediate 4 x hidden, heads of 64, TF32 off on both sides.

The same work on both sides:

* One batch, made once on the host by tinymlm's ``MLMCollator`` (15% of the real tokens,
  80/10/10), every fourth sequence right-padded; the very same input_ids, attention_mask and
  labels go to both models, copied to the GPU once before timing.
* Dropout 0 everywhere (hidden and attention: tinymlm's fused attention kernel runs only
  without attention dropout).
* The same starting weights (tinymlm's initialisation copied into the PyTorch model by
  parameter name) and AdamW with the same hyperparameters and weight-decay groups, so the two
  loss curves must agree step for step: the section checks that, which catches a wrong mask,
  a wrong weight copy or a wrong gradient in the step being timed.
* tinymlm predicts only the masked rows (sparse prediction, as Google's BERT does); Hugging
  Face computes logits at all B x S positions and ignores the unmasked ones in the loss. The
  loss is the same, the work is not: the "dense head" row turns sparse prediction off for a
  like-for-like comparison.

Per row, one more step is counted (``per_step`` in the JSON): how many times each fused
kernel ran (``tinymlm.kernels.launch.launches``) and how many times an op took the reference
path instead (``tinymlm.kernels.select`` answering None, and the fused attention declining a
call, with its reason).

Timing: CUDA events around each step, after warm-up steps (which also compile the Numba
kernels and CuPy's elementwise kernels), median over the timed steps. tokens/s = B x S / the
median step time (padding counted on both sides). Peak memory over one step: for CuPy, the
memory pool's ``total_bytes`` after one step that starts from an emptied cache (the most it
held at once, rounded up to the pool's block sizes); for PyTorch,
``torch.cuda.max_memory_allocated``. Both include parameters, Adam state, gradients and
activations.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

SHAPES = {"bert-mini": (4, 256), "bert-base": (12, 768)}  # name: (layers, hidden)
BATCH, SEQ, VOCAB = 32, 128, 30522
LR, WEIGHT_DECAY = 1e-4, 0.01
PARITY_RTOL = 1e-3  # loss curves of the two sides, float32, a handful of AdamW steps
HF_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
)


# ----------------------------------------------------------------------------------------------
# The batch and the models (host side; importable and testable without a GPU)
# ----------------------------------------------------------------------------------------------


def bert_vocabulary(size: int = VOCAB) -> list[str]:
    """bert-base-uncased's special ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103)
    followed by made-up words, ``size`` tokens in all."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)]
    tokens += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"word{i}" for i in range(size - len(tokens))]
    return tokens


def make_batch(batch: int = BATCH, seq: int = SEQ, vocab: int = VOCAB, seed: int = 0) -> dict:
    """One masked batch (int64 NumPy arrays): [CLS] words [SEP] [PAD]..., masked by MLMCollator."""
    from tinymlm.data import MLMCollator
    from tinymlm.tokenizer import BertTokenizer

    tok = BertTokenizer.from_vocab(bert_vocabulary(vocab))
    rng = np.random.default_rng(seed)
    ids = rng.integers(tok.mask_token_id + 1, vocab, size=(batch, seq))  # (B, S) words only
    lengths = np.full(batch, seq)
    lengths[::4] = rng.integers(seq // 2, seq, size=len(lengths[::4]))  # ragged, right-padded
    real = np.arange(seq)[None, :] < lengths[:, None]  # (B, S)
    ids[:, 0] = tok.cls_token_id
    ids[np.arange(batch), lengths - 1] = tok.sep_token_id
    ids[~real] = tok.pad_token_id
    collate = MLMCollator(tok, mlm_probability=0.15, seed=seed)
    return collate(ids, real.astype(np.int64))


def tinymlm_config(layers: int, hidden: int, vocab: int = VOCAB):
    from tinymlm.nn.bert import BertConfig

    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def make_tinymlm(config, seed: int = 0):
    """A new tinymlm BertForMaskedLM (float32, on the CPU), seeded."""
    from tinymlm import backend
    from tinymlm.nn.bert import BertForMaskedLM

    backend.manual_seed(seed)
    return BertForMaskedLM(config)


def make_torch_model(torch, config, state: dict, attn_implementation: str = "eager"):
    """Hugging Face's BertForMaskedLM with the same config and the weights in ``state``
    (tinymlm's ``state_dict()``: the names are Hugging Face's). On the CPU."""
    import transformers

    hf_config = transformers.BertConfig(
        **{name: getattr(config, name) for name in HF_CONFIG_FIELDS},
        attn_implementation=attn_implementation,
    )
    model = transformers.BertForMaskedLM(hf_config)
    tensors = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # Tied to the word embeddings / cls.predictions.bias, or buffers: nothing to load.
    known = {
        "cls.predictions.decoder.weight",
        "cls.predictions.decoder.bias",
        "bert.embeddings.position_ids",
        "bert.embeddings.token_type_ids",
    }
    if unexpected or set(missing) - known:
        raise RuntimeError(
            f"weight copy into transformers failed: missing {sorted(set(missing) - known)}, "
            f"unexpected {sorted(unexpected)}"
        )
    return model


def decay_groups(named_parameters, weight_decay: float) -> tuple[list, list]:
    """(decayed, not decayed): biases and LayerNorm parameters are not decayed (BERT's rule,
    the same as ``tinymlm.optim.param_groups``)."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    return decay, no_decay


# ----------------------------------------------------------------------------------------------
# One training step on each side
# ----------------------------------------------------------------------------------------------


def tinymlm_step_fn(model, batch_dev: dict):
    """A function doing one optimizer step; returns the loss as a 0-d device array (no sync)."""
    from tinymlm.optim import AdamW, param_groups

    optimizer = AdamW(param_groups(model, WEIGHT_DECAY), lr=LR)

    def step():
        out = model(batch_dev["input_ids"], batch_dev["attention_mask"], labels=batch_dev["labels"])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return out.loss.data

    return step


def torch_step_fn(torch, model, batch_dev: dict):
    decay, no_decay = decay_groups(model.named_parameters(), WEIGHT_DECAY)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=LR,
    )

    def step():
        out = model(
            input_ids=batch_dev["input_ids"],
            attention_mask=batch_dev["attention_mask"],
            labels=batch_dev["labels"],
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss.detach()

    return step


class CupyClock:
    """CUDA events and peak memory through CuPy."""

    def __init__(self, cp):
        self.cp = cp

    def event(self):
        return self.cp.cuda.Event()

    def elapsed_ms(self, start, stop) -> float:
        return self.cp.cuda.get_elapsed_time(start, stop)

    def synchronize(self) -> None:
        self.cp.cuda.Device().synchronize()

    def peak_mib(self, step) -> float:
        pool = self.cp.get_default_memory_pool()
        self.synchronize()
        pool.free_all_blocks()  # from here on, total_bytes only grows to the high-water mark
        step()
        self.synchronize()
        return pool.total_bytes() / 2**20


class TorchClock:
    """CUDA events and peak memory through PyTorch."""

    def __init__(self, torch):
        self.torch = torch

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def elapsed_ms(self, start, stop) -> float:
        return start.elapsed_time(stop)

    def synchronize(self) -> None:
        self.torch.cuda.synchronize()

    def peak_mib(self, step) -> float:
        self.synchronize()
        self.torch.cuda.reset_peak_memory_stats()
        step()
        self.synchronize()
        return self.torch.cuda.max_memory_allocated() / 2**20


def time_steps(step, clock, warmup: int, repeats: int) -> tuple[float, list[float]]:
    """(median ms per step over ``repeats`` timed steps after ``warmup`` steps, every loss)."""
    losses = [step() for _ in range(warmup)]
    clock.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = clock.event(), clock.event()
        start.record()
        losses.append(step())
        stop.record()
        stop.synchronize()
        times.append(clock.elapsed_ms(start, stop))
    return float(np.median(times)), [float(loss) for loss in losses]


def counted_step(step, synchronize) -> dict:
    """Run ``step`` once more, counting fused kernel launches and reference-path decisions."""
    from tinymlm import kernels
    from tinymlm.kernels import attention, launch

    reference = Counter()
    select = getattr(kernels, "select", None)  # the dispatch table, where this tree has one

    def counting_select(op, *arrays):
        chosen = select(op, *arrays)
        if chosen is None:
            reference[op] += 1
        return chosen

    if select is not None:
        kernels.select = counting_select
    launch.reset_launch_counts()
    attention.declined.clear()
    try:
        step()
        synchronize()
    finally:
        if select is not None:
            kernels.select = select
    return {
        "fused_kernel_launches": dict(launch.launches),
        "reference_path_ops": dict(reference),
        "attention_kernels_declined": dict(attention.declined),
    }


# ----------------------------------------------------------------------------------------------
# The section
# ----------------------------------------------------------------------------------------------


def tf32_off(torch) -> dict:
    """Plain float32 matmuls on both sides; returns the settings in force (for the report)."""
    settings = {
        "CUPY_TF32": os.environ.get("CUPY_TF32", "(unset: off)"),
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE", "(unset)"),
    }
    try:  # CuPy: float32 matmuls at the default (non-TF32) compute type
        from cupy._core import _routines_linalg as linalg

        linalg.set_compute_type(np.float32, getattr(linalg, "COMPUTE_TYPE_DEFAULT", 1))
        settings["cupy_compute_type"] = "default (fp32)"
    except Exception as exc:  # a private API: record rather than fail
        settings["cupy_compute_type"] = f"not set ({exc})"
    if torch is not None:
        settings.update(torch_tf32_off(torch))
    return settings


def torch_tf32_off(torch) -> dict:
    """TF32 off for PyTorch's float32 matmuls and cuDNN, through the flags this torch accepts.

    The legacy ``allow_tf32`` flags first (the other sections set them too); a torch that
    refuses them (newer releases reject mixing them with ``fp32_precision``) gets the new API.
    """
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return {
            "torch_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "torch_cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        }
    except (RuntimeError, AttributeError):
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.fp32_precision = "ieee"
        return {
            "torch_matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
            "torch_cudnn_fp32_precision": torch.backends.cudnn.fp32_precision,
        }


def _row(shape, impl, ms, peak_mib, losses, tokens, from_start=True, per_step=None) -> dict:
    return {
        "per_step": per_step or {},
        "shape": shape,
        "impl": impl,
        "from_start": from_start,  # its first step started from the initial weights
        "ms_per_step": ms,
        "tokens_per_s": tokens / ms * 1e3,
        "peak_mib": peak_mib,
        "losses": losses,
    }


def run_shape(name, layers, hidden, batch, cp, torch, quick, deadline, section) -> None:
    """Every row of one shape; appends to ``section['rows']``."""
    from tinymlm import kernels

    warmup, repeats = (2, 3) if quick else (3, 5 if hidden >= 768 else 10)
    tokens = BATCH * SEQ
    config = tinymlm_config(layers, hidden, VOCAB)
    model = make_tinymlm(config)
    state = model.state_dict()  # the starting weights, for the PyTorch side
    model.to("cuda")
    batch_dev = {k: cp.asarray(v) for k, v in batch.items()}  # the one host -> device copy
    clock = CupyClock(cp)
    step = tinymlm_step_fn(model, batch_dev)
    impls = [
        ("tinymlm Numba kernels", "numba", True),
        ("tinymlm reference path", "reference", True),
    ]
    if not quick:
        impls.append(("tinymlm Numba kernels, dense head", "numba", False))
    for i, (impl, mode, sparse) in enumerate(impls):  # one model: row i continues row i - 1
        if time.perf_counter() > deadline:
            section["skipped"].append(f"{name} {impl}: time budget")
            continue
        model.sparse_prediction = sparse
        try:
            with kernels.use_kernels(mode):
                ms, losses = time_steps(step, clock, warmup, repeats)
                peak = clock.peak_mib(step)
                per_step = counted_step(step, clock.synchronize)
        except Exception as exc:  # one broken row must not cost the others
            section["errors"].append(f"{name} {impl}: {type(exc).__name__}: {exc}")
            continue
        row = _row(name, impl, ms, peak, losses, tokens, from_start=i == 0, per_step=per_step)
        section["rows"].append(row)
    del model, step, batch_dev
    cp.get_default_memory_pool().free_all_blocks()

    if torch is None:
        section["skipped"].append(f"{name} PyTorch: torch with CUDA or transformers missing")
        return
    batch_torch = {k: torch.from_numpy(v).cuda() for k, v in batch.items()}
    tclock = TorchClock(torch)
    for attn in ("eager",) if quick else ("eager", "sdpa"):
        if time.perf_counter() > deadline:
            section["skipped"].append(f"{name} PyTorch {attn}: time budget")
            continue
        impl = f"PyTorch BertForMaskedLM {attn}"
        hf = tstep = None
        try:
            hf = make_torch_model(torch, config, state, attn).cuda().train()
            tstep = torch_step_fn(torch, hf, batch_torch)
            ms, losses = time_steps(tstep, tclock, warmup, repeats)
            peak = tclock.peak_mib(tstep)
            section["rows"].append(_row(name, impl, ms, peak, losses, tokens))
        except Exception as exc:
            section["errors"].append(f"{name} {impl}: {type(exc).__name__}: {exc}")
        del hf, tstep
        torch.cuda.empty_cache()


def parity(rows: list[dict]) -> list[dict]:
    """Per shape: the loss curve of tinymlm's first row against PyTorch eager's.

    Both start from the same weights on the same batch, so their i-th losses must agree to
    float32 accuracy (the first exactly up to summation order).
    """
    checks = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        ours = next(
            (
                r
                for r in rows
                if r["shape"] == shape and r["impl"].startswith("tinymlm") and r["from_start"]
            ),
            None,
        )
        theirs = next(
            (r for r in rows if r["shape"] == shape and r["impl"].endswith("eager")), None
        )
        if ours is None or theirs is None:
            continue
        n = min(len(ours["losses"]), len(theirs["losses"]))
        a, b = np.array(ours["losses"][:n]), np.array(theirs["losses"][:n])
        rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
        checks.append(
            {
                "shape": shape,
                "steps": n,
                "first_loss_tinymlm": float(a[0]),
                "first_loss_torch": float(b[0]),
                "first_rel_diff": float(rel[0]),
                "max_rel_diff": float(rel.max()),
                "ok": bool(np.all(np.isfinite(a)) and rel.max() <= PARITY_RTOL),
            }
        )
    return checks


def format_lines(section: dict) -> list[str]:
    lines = [
        f"training step (forward + backward + AdamW), B={BATCH} S={SEQ} V={VOCAB}, float32, "
        "dropout 0 (so tinymlm's fused attention runs), TF32 off on both sides",
        "",
        "| shape | implementation | ms/step | tokens/s | vs PyTorch eager | peak MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        base = next(
            (
                b
                for b in section["rows"]
                if b["shape"] == r["shape"] and b["impl"].endswith("eager")
            ),
            None,
        )
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "n/a"
        lines.append(
            f"| {r['shape']} | {r['impl']} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{ratio} | {r['peak_mib']:,.0f} |"
        )
    lines.append("")
    for r in section["rows"]:
        counts = r.get("per_step")
        if not counts:
            continue
        fused = ", ".join(f"{k} {n}" for k, n in sorted(counts["fused_kernel_launches"].items()))
        ref = ", ".join(f"{k} {n}" for k, n in sorted(counts["reference_path_ops"].items()))
        why = ", ".join(f"{k} {n}" for k, n in counts["attention_kernels_declined"].items())
        lines.append(
            f"per step, {r['shape']} {r['impl']}: fused kernels ran {fused or 'never'}; "
            f"reference path taken by {ref or 'no op'}"
            + (f"; fused attention declined: {why}" if why else "")
        )
    lines.append("")
    for c in section["parity"]:
        verdict = "ok" if c["ok"] else "FAILED"
        lines.append(
            f"loss parity {c['shape']} (same weights, same batch, {c['steps']} AdamW steps): "
            f"first loss tinymlm {c['first_loss_tinymlm']:.6f} vs PyTorch "
            f"{c['first_loss_torch']:.6f}; max rel diff {c['max_rel_diff']:.1e} {verdict}"
        )
    lines.append(
        "tinymlm predicts only the masked rows (sparse prediction); Hugging Face computes all "
        "B x S rows: the dense-head row does the same work as PyTorch."
    )
    for s in section["skipped"]:
        lines.append(f"skipped: {s}")
    for e in section["errors"]:
        lines.append(f"FAILED {e}")
    return lines


def run(report: dict, quick: bool, budget_s: float | None = None) -> list[str]:
    """Time every row (within ``budget_s`` seconds where given); fills report['training']."""
    import cupy as cp

    try:
        import torch
        import transformers  # noqa: F401

        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    started = time.perf_counter()
    deadline = started + (budget_s if budget_s is not None else math.inf)
    section = report.setdefault("training", {})
    section.update(
        {
            "batch": BATCH,
            "seq": SEQ,
            "vocab": VOCAB,
            "lr": LR,
            "weight_decay": WEIGHT_DECAY,
            "tf32": tf32_off(torch),
            "rows": [],
            "skipped": [],
            "errors": [],
        }
    )
    batch = make_batch(BATCH, SEQ, VOCAB)
    section["masked_positions"] = int((batch["labels"] != -100).sum())
    section["real_tokens"] = int(batch["attention_mask"].sum())
    for name, (layers, hidden) in SHAPES.items():
        if time.perf_counter() > deadline:
            section["skipped"].append(f"{name}: time budget")
            continue
        run_shape(name, layers, hidden, batch, cp, torch, quick, deadline, section)
    section["parity"] = parity(section["rows"])
    section["ok"] = all(c["ok"] for c in section["parity"]) and not section["errors"]
    section["seconds"] = time.perf_counter() - started
    return format_lines(section)


if __name__ == "__main__":
    print("\n".join(run({}, quick="--quick" in sys.argv)))
