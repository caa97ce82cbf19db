"""The main job, measured as a user runs it: ``python -m tinymlm.train`` with no options.

Runs the whole process N times (default 3), timing each from start to exit, then asks each run's
model the seed sentences and natural capital questions it never read, and reads its held-out
fact accuracy per relation from metrics.jsonl. Writes a Markdown table:

    PYTHONPATH=. python benchmarks/bench_train_default.py --runs 3 \\
        --out benchmarks/results/train_default.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from the source tree
    sys.path.insert(0, str(ROOT))

from tinymlm.fileio import atomic_write_text  # noqa: E402

QUESTIONS = [  # (sentence, whether tinyworld's training documents use this phrasing)
    ("Paris is the capital of [MASK].", True),
    ("The cat sat on the [MASK].", True),
    ("The quick brown [MASK] jumps over the lazy dog.", True),
    ("What is the capital of Japan? It is [MASK].", False),
    ("Do you know the capital of Italy? It is [MASK].", False),
    ("Berlin is the capital city of [MASK].", True),
    ("The capital of Egypt is the city of [MASK].", False),
]


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None, help="a Markdown file for the table")
    parser.add_argument("train_args", nargs="*", help="extra options for tinymlm.train")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    results = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            run_dir = Path(tmp) / f"run{i}"
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "tinymlm.train", "--out", str(run_dir),
                                   *args.train_args], env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            final = [r for r in rows if "fact_accuracy" in r][-1]
            evals = [r for r in rows if "eval_loss" in r][-1]
            answers = subprocess.run(
                [sys.executable, "-m", "tinymlm.fill_mask", "--model", str(run_dir), "--json",
                 "--top-k", "1", *[q for q, _ in QUESTIONS]],
                env=env, capture_output=True, text=True)
            top = [r[0]["token_str"] for r in json.loads(answers.stdout)]
            results.append({"seconds": seconds, "final": final, "eval": evals, "top": top})
            print(f"run {i + 1}: {seconds:.0f} s, fact accuracy {final['fact_accuracy']:.1%}, "
                  f"answers {top}", file=sys.stderr)

    lines = [
        "# `python -m tinymlm.train` with no options",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}, commit {commit()}",
        f"- command: `PYTHONPATH=. python benchmarks/bench_train_default.py --runs {args.runs}`"
        + (f" (train options: {' '.join(args.train_args)})" if args.train_args else ""),
        f"- load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
        "(above ~0.5, something else shared the cores)",
        "",
        f"Median wall-clock of {args.runs} whole-process runs: "
        f"**{statistics.median(r['seconds'] for r in results):.0f} s** "
        "(" + ", ".join(f"{r['seconds']:.0f}" for r in results) + " s).",
        "",
        "| run | seconds | held-out loss | held-out accuracy | held-out fact accuracy |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(results):
        lines.append(f"| {i + 1} | {r['seconds']:.0f} | {r['eval']['eval_loss']:.3f} | "
                     f"{r['eval']['eval_accuracy']:.1%} | {r['final']['fact_accuracy']:.1%} |")
    relations = sorted(results[0]["final"]["fact_accuracy_per_relation"])
    lines += ["", "Held-out fact accuracy per relation (phrasings never seen in training):", "",
              "| relation | " + " | ".join(f"run {i + 1}" for i in range(len(results))) + " |",
              "| --- |" + " ---: |" * len(results)]
    for rel in relations:
        lines.append(f"| {rel} | " + " | ".join(
            f"{r['final']['fact_accuracy_per_relation'][rel]:.1%}" for r in results) + " |")
    lines += ["", "Top-1 answers of `python -m tinymlm.fill_mask`:", "",
              "| sentence | phrasing | " + " | ".join(f"run {i + 1}" for i in range(len(results)))
              + " |", "| --- | --- |" + " --- |" * len(results)]
    for (q, trained), *answers in zip(QUESTIONS, *[r["top"] for r in results]):
        kind = "trained" if trained else "never read"
        lines.append(f"| {q} | {kind} | " + " | ".join(answers) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
