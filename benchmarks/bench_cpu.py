"""One training step on the CPU, tinymlm against PyTorch + Hugging Face, side by side.

    PYTHONPATH=. python benchmarks/bench_cpu.py                 # the table, both sizes
    PYTHONPATH=. python benchmarks/bench_cpu.py --profile       # + where tinymlm's step goes
    PYTHONPATH=. python benchmarks/bench_cpu.py --out benchmarks/results/cpu_<date>.md

The job: BertForMaskedLM at bert-tiny (2 layers, H 128) and bert-mini (4 layers, H 256), a
batch of B = 32 sequences of S = 128 tokens, vocabulary 30,522, 15% of the positions
predicted. A step is forward + backward + AdamW (weight decay on matrices only) + zero_grad,
float32, eager (no torch.compile), both libraries on the same number of threads, the same
weights (tinymlm's initialisation copied into the Hugging Face model), the same batches and
the same labels. Dropout is on (0.1) in both, as in training.

Two comparisons:
    (a) same math: tinymlm with ``sparse_prediction=False`` computes logits at every position
        as Hugging Face does; the loss is the same number.
    (b) each library's MLM recipe: tinymlm's default (the head only on the predicted rows, and
        its fused kernels) against Hugging Face's default (the head at every position).

Timing: after warm-up, the libraries take turns step by step (A B A B ...) in one process, so
a load that comes and goes on the machine hits both alike; the table shows the median.
Peak memory: each side runs three steps in a fresh subprocess of its own (without importing
the other library) and reports its peak resident set (Linux's VmHWM, the high-water mark that
``ru_maxrss`` also reports, but without ``ru_maxrss``'s carry-over from the forking parent; it
sees BLAS's and PyTorch's allocations that tracemalloc would miss): the peak of the whole
process and its growth over the process right after the model and optimizer were built.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = {"tiny": (2, 128), "mini": (4, 256)}  # layers, hidden size (heads = H / 64)
VOCAB = 30522
MASK_PROB = 0.15


def set_threads(n: int) -> None:
    """The same thread count for OpenBLAS (NumPy), Numba and PyTorch (must precede imports)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def config_kwargs(size: str) -> dict:
    layers, hidden = SIZES[size]
    return dict(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
    )


def make_batches(n: int, batch: int, seq: int, seed: int = 0) -> list[dict]:
    """Random ids, right padding (lengths from 3/4 S to S), 15% of real tokens predicted."""
    import numpy as np

    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        lengths = rng.integers(3 * seq // 4, seq + 1, size=batch)
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)  # (B, S)
        ids = rng.integers(1000, VOCAB, size=(batch, seq)) * mask  # (B, S), 0 = [PAD]
        predicted = (rng.random((batch, seq)) < MASK_PROB) & (mask == 1)
        labels = np.where(predicted, ids, -100)
        ids = np.where(predicted, 103, ids)  # [MASK]
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


# --- the two libraries' steps ------------------------------------------------------------------


def build_tinymlm(size: str, sparse: bool, seed: int = 0):
    import tinymlm
    from tinymlm.nn.bert import BertConfig, BertForMaskedLM
    from tinymlm.optim import AdamW, param_groups

    tinymlm.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(**config_kwargs(size)), sparse_prediction=sparse)
    model.train()
    opt = AdamW(param_groups(model, 0.01), lr=1e-4)

    def step(b):
        # The trainer's recipe asks for the loss alone (its logits then never leave the loss);
        # the same-math comparison keeps Hugging Face's habit of returning them.
        out = model(b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                    return_logits=not sparse)
        loss = float(out.loss.data)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return model, step


def build_torch(size: str, weights_from=None):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**config_kwargs(size)))
    if weights_from is not None:  # start from tinymlm's weights: the same job, number for number
        state = {k: torch.from_numpy(p.numpy()) for k, p in weights_from.named_parameters()}
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
        model.load_state_dict(state, strict=False)
    model.train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    other = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}], lr=1e-4
    )
    tensors = {}

    def step(b):
        key = id(b)
        if key not in tensors:  # converted once: the batch is data, not work
            tensors[key] = {k: torch.from_numpy(v) for k, v in b.items()}
        t = tensors[key]
        out = model(
            input_ids=t["input_ids"], attention_mask=t["attention_mask"], labels=t["labels"]
        )
        loss = float(out.loss.detach())
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return model, step


# --- peak memory: one side in a fresh process -------------------------------------------------


def memory_worker(side: str, size: str, batch: int, seq: int, steps: int) -> dict:
    """Runs in its own process: build, measure, run ``steps`` steps, measure the peak."""
    batches = make_batches(steps, batch, seq)
    if side == "torch":
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        _, step = build_torch(size)
    else:
        import numba

        numba.set_num_threads(int(os.environ["NUMBA_NUM_THREADS"]))
        _, step = build_tinymlm(size, sparse=(side == "tinymlm-sparse"))
    built = peak_rss_kib()
    for b in batches:
        step(b)
    peak = peak_rss_kib()
    return {"built_mib": built / 1024, "peak_mib": peak / 1024, "step_mib": (peak - built) / 1024}


def peak_rss_kib() -> float:
    """The peak resident set of this process in KiB.

    Linux's VmHWM belongs to the process's own memory map, so it starts afresh at exec; the
    ru_maxrss of getrusage can carry over the peak of the (large) parent that forked us.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def measure_memory(side: str, size: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--memory-worker",
        side,
        "--sizes",
        size,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--threads",
        str(args.threads),
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- timing -------------------------------------------------------------------------------------


def time_interleaved(steps: dict, batches: list, warmup: int, repeats: int) -> dict:
    """Median seconds per step of each contender, taking turns step by step."""
    times = {name: [] for name in steps}
    losses = {name: [] for name in steps}
    for i in range(warmup + repeats):
        b = batches[i % len(batches)]
        for name, step in steps.items():
            start = time.perf_counter()
            loss = step(b)
            elapsed = time.perf_counter() - start
            losses[name].append(loss)
            if i >= warmup:
                times[name].append(elapsed)
    return {name: (statistics.median(t), losses[name]) for name, t in times.items()}


def run_size(size: str, args) -> dict:
    import numpy as np
    import torch

    batches = make_batches(max(4, args.warmup + args.repeats), args.batch, args.seq)
    dense_model, dense_step = build_tinymlm(size, sparse=False)
    _, sparse_step = build_tinymlm(size, sparse=True)
    _, torch_step = build_torch(size, weights_from=dense_model)

    # The same job: before any update, both libraries' losses agree (dropout off to compare).
    from tinymlm.autograd import no_grad

    b = batches[0]
    dense_model.eval()
    with no_grad():
        ours = float(
            dense_model(
                b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]
            ).loss.data
        )
    dense_model.train()
    ref = build_torch(size, weights_from=dense_model)[0].eval()
    with torch.no_grad():
        theirs = float(
            ref(
                input_ids=torch.from_numpy(b["input_ids"]),
                attention_mask=torch.from_numpy(b["attention_mask"]),
                labels=torch.from_numpy(b["labels"]),
            ).loss
        )
    del ref

    result = time_interleaved(
        {"tinymlm (dense)": dense_step, "pytorch": torch_step, "tinymlm (sparse)": sparse_step},
        batches,
        args.warmup,
        args.repeats,
    )
    tokens = args.batch * args.seq
    rows = {
        name: {"step_s": t, "tokens_per_s": tokens / t, "losses": ls}
        for name, (t, ls) in result.items()
    }
    if not args.no_memory:
        for name, side in (
            ("tinymlm (dense)", "tinymlm-dense"),
            ("pytorch", "torch"),
            ("tinymlm (sparse)", "tinymlm-sparse"),
        ):
            rows[name]["memory"] = measure_memory(side, size, args)
    return {
        "size": size,
        "rows": rows,
        "initial_loss": (ours, theirs),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


# --- the report ---------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(results: list[dict], args, profile_text: str | None, load: tuple) -> str:
    import numba
    import transformers

    lines = [
        "# One training step on the CPU: tinymlm vs PyTorch + Hugging Face",
        "",
        f"- date: {datetime.date.today()}; commit: {git_commit()}",
        f"- machine: {platform.machine()}, {platform.processor() or platform.platform()}, "
        f"{os.cpu_count()} cores; threads: {args.threads} for OpenBLAS, Numba and PyTorch",
        f"- numpy {results[0]['numpy']}, numba {numba.__version__}, torch {results[0]['torch']}, "
        f"transformers {transformers.__version__}",
        f"- load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f} "
        "(other jobs share the cores: absolute times are inflated, the ratios are the measure)",
        f"- job: B = {args.batch}, S = {args.seq}, V = {VOCAB}, 15% of real tokens predicted, "
        "right padding (lengths 3/4 S to S), dropout 0.1, float32, AdamW (wd 0.01 on matrices)",
        f"- step = forward + backward + AdamW + zero_grad; median of {args.repeats} steps after "
        f"{args.warmup} warm-up steps, the three contenders taking turns step by step",
        "- (a) same math: tinymlm dense (logits at every position) vs PyTorch. "
        "(b) each library's recipe: tinymlm sparse (head on the predicted rows only) vs PyTorch",
        "- memory: peak RSS (VmHWM) of a fresh subprocess per contender running 3 steps (peak of "
        "the whole process, and "
        "its growth over the process with model and optimizer built); PyTorch's process also "
        "holds the torch library itself",
        "",
        "| size | contender | step (ms) | tokens/s | step vs PyTorch | tokens/s vs PyTorch "
        "| peak RSS (MiB) | step growth (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        torch_row = res["rows"]["pytorch"]
        for name, row in res["rows"].items():
            mem = row.get("memory")
            peak = f"{mem['peak_mib']:.0f}" if mem else "-"
            growth = f"{mem['step_mib']:.0f}" if mem else "-"
            lines.append(
                f"| {res['size']} | {name} | {row['step_s'] * 1e3:.0f} | "
                f"{row['tokens_per_s']:,.0f} | {row['step_s'] / torch_row['step_s']:.2f}× | "
                f"{row['tokens_per_s'] / torch_row['tokens_per_s']:.2f}× | {peak} | {growth} |"
            )
    lines.append("")
    for res in results:
        ours, theirs = res["initial_loss"]
        lines.append(
            f"- {res['size']}: loss before training (eval mode, same weights and batch): "
            f"tinymlm {ours:.6f}, PyTorch {theirs:.6f}"
        )
    if profile_text:
        lines += ["", profile_text]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,mini")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also profile tinymlm's step")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_threads(args.threads)

    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.sizes, args.batch, args.seq, 3)))
        return 0

    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    results = []
    for size in args.sizes.split(","):
        print(f"timing {size} ...", file=sys.stderr, flush=True)
        results.append(run_size(size, args))
    profile_text = None
    if args.profile:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from profile_cpu import profile_markdown

        profile_text = profile_markdown(args.sizes.split(","), args.batch, args.seq)
    text = report(results, args, profile_text, (load_before, os.getloadavg()[0]))
    print(text)
    if args.out:
        from tinymlm.fileio import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
