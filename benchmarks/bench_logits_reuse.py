"""What the reuse rule costs: a training step that returns the logits against one that does not.

    PYTHONPATH=. python benchmarks/bench_logits_reuse.py --out benchmarks/results/logits_reuse.md

BertForMaskedLM at bert-mini (4 layers, H 256), B = 32, S = 128, V = 30,522, 15% predicted,
float32, dropout 0.1, forward + backward + AdamW, two threads. Two ways to ask for the loss:

- ``return_logits=True`` (Hugging Face's habit): ``out.logits`` (M, V) is the user's, so the
  cross-entropy's backward writes its gradient into a new (M, V) array;
- ``return_logits=False`` (the trainer's): the loss is one Function, ``FusedLinearCrossEntropy``,
  whose logits never leave it, so backward overwrites them with their gradient.

Time: both ways in one process, alternating step by step after warm-up; median of the
repeats. The 1-minute load average is recorded before anything runs (the machine's own load:
no timing is reported when it is above 1) and after the timing (which includes this
benchmark's own two threads). Peak memory: then each way runs three steps in a fresh process
(Linux's VmHWM, growth over the process after building the model).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_cpu import config_kwargs, make_batches, peak_rss_kib, set_threads  # noqa: E402


def build(return_logits: bool, seed: int = 0):
    import tinymlm
    from tinymlm.nn.bert import BertConfig, BertForMaskedLM
    from tinymlm.optim import AdamW, param_groups

    tinymlm.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(**config_kwargs("mini")))
    model.train()
    opt = AdamW(param_groups(model, 0.01), lr=1e-4)

    def step(b):
        out = model(b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"],
                    return_logits=return_logits)
        loss = float(out.loss.data)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return step


def memory_worker(return_logits: bool, batch: int, seq: int) -> dict:
    batches = make_batches(3, batch, seq)
    step = build(return_logits)
    built = peak_rss_kib()
    losses = [step(b) for b in batches]
    peak = peak_rss_kib()
    return {"step_mib": (peak - built) / 1024, "peak_mib": peak / 1024, "losses": losses}


def memory(return_logits: bool, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, __file__, "--memory-worker", str(int(return_logits)),
               "--batch", str(args.batch), "--seq", str(args.seq)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def timing(args) -> dict:
    batches = make_batches(args.warmup + args.repeats, args.batch, args.seq)
    steps = {"returned": build(True), "loss alone": build(False)}
    times = {name: [] for name in steps}
    for i, b in enumerate(batches):
        for name, step in steps.items():
            start = time.perf_counter()
            step(b)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(2)
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(bool(int(args.memory_worker)), args.batch, args.seq)))
        return

    load_before = os.getloadavg()[0]
    times = timing(args)
    load_after = os.getloadavg()[0]
    quiet = load_before <= 1.0
    mem = {"returned": memory(True, args), "loss alone": memory(False, args)}
    assert mem["returned"]["losses"] == mem["loss alone"]["losses"], "the same numbers, bit for bit"

    lines = [
        "# What returning the logits costs (bert-mini, B=32, S=128, V=30522, float32, 2 threads)",
        "",
        f"- date: {datetime.date.today()}, machine: {platform.machine()}, {os.cpu_count()} cores",
        f"- commit: {os.environ.get('TINYMLM_COMMIT', 'see git log')}",
        "- command: `PYTHONPATH=. python benchmarks/bench_logits_reuse.py --out ...`",
        f"- load average before / after the timing (after includes this benchmark's threads): "
        f"{load_before:.2f} / {load_after:.2f}",
        "",
        "| the step asks for | step memory growth (MiB) | peak RSS (MiB) | median step (s) |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("returned", "loss alone"):
        shown = f"{times[name]:.3f}" if quiet else "not published (load before > 1)"
        label = "loss + out.logits" if name == "returned" else "the loss alone"
        lines.append(f"| {label} | {mem[name]['step_mib']:.0f} | {mem[name]['peak_mib']:.0f} "
                     f"| {shown} |")
    lines += ["", "Both ways give the same losses, bit for bit (asserted)."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        from tinymlm.fileio import atomic_write_text

        atomic_write_text(Path(args.out), report)


if __name__ == "__main__":
    main()
