"""Train on real English and compare the held-out MLM loss with the unigram baseline.

The corpus is CPython's own documentation (``pydoc_data.topics``, shipped with every Python),
a vocabulary is trained on it, and a small BERT is pretrained with the ordinary command. The
unigram baseline predicts every masked token from its frequency in the training text alone
(add-one smoothing), on exactly the held-out positions and masks the model is scored on.

    PYTHONPATH=. python benchmarks/real_text.py --steps 600 --out benchmarks/results/real_text.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinymlm.data import python_docs_corpus  # noqa: E402
from tinymlm.fileio import atomic_write_text  # noqa: E402
from tinymlm.nn.bert import BertForMaskedLM  # noqa: E402
from tinymlm.objectives import MaskedLanguageModeling, TrainConfig, build_corpus  # noqa: E402
from tinymlm.objectives.pretraining import eval_collator  # noqa: E402
from tinymlm.train import train  # noqa: E402


def unigram_baseline(corpus, cfg) -> float:
    """Mean −log p_unigram(target) over the held-out masked positions of MLM's ``evaluate``."""
    counts = np.bincount(corpus.train_ids[corpus.train_mask == 1].ravel(),
                         minlength=len(corpus.tokenizer)).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    collate = eval_collator(cfg, corpus.tokenizer)  # the masks evaluate() draws
    total, n = 0.0, 0
    for start in range(0, len(corpus.eval_ids), cfg.batch_size):
        labels = collate(corpus.eval_ids[start:start + cfg.batch_size],
                         corpus.eval_mask[start:start + cfg.batch_size])["labels"]
        targets = labels[labels != -100]
        total -= log_p[targets].sum()
        n += len(targets)
    return total / n


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--model-size", default="tiny")
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "python_docs.txt"
        text_file.write_text("\n\n".join(python_docs_corpus()), encoding="utf-8")
        cfg = TrainConfig(corpus=[str(text_file)], steps=args.steps, model_size=args.model_size,
                          vocab_size=args.vocab_size, max_length=128, lr=1e-3,
                          eval_every=args.steps, save_every=args.steps)
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        start = time.perf_counter()
        train(cfg, run_dir, log=lambda m: print(m, file=sys.stderr))
        seconds = time.perf_counter() - start
        corpus = build_corpus(cfg, log=lambda m: None)
        model = BertForMaskedLM.from_pretrained(run_dir)
        result = MaskedLanguageModeling(cfg, corpus).evaluate(model)
        baseline = unigram_baseline(corpus, cfg)
    tokens = int(corpus.train_mask.sum())
    lines = [
        "# Real English: held-out MLM loss against the unigram baseline",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores; date "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        f"- corpus: CPython's `pydoc_data.topics`, {tokens:,} training tokens, vocabulary "
        f"{len(corpus.tokenizer)} (WordPiece trained on it), {len(corpus.eval_ids)} held-out "
        "sequences of 128",
        f"- model: {args.model_size}, {args.steps} steps of batch {cfg.batch_size}, lr {cfg.lr} "
        f"({seconds:.0f} s)",
        f"- command: `PYTHONPATH=. python benchmarks/real_text.py --steps {args.steps} "
        f"--model-size {args.model_size}`",
        "",
        "| predictor | held-out masked-token loss (nats) | perplexity | accuracy |",
        "| --- | ---: | ---: | ---: |",
        f"| unigram frequencies | {baseline:.3f} | {math.exp(baseline):.1f} | |",
        f"| tinymlm BERT | {result['eval_loss']:.3f} | {result['eval_perplexity']:.1f} | "
        f"{result['eval_accuracy']:.1%} |",
        "",
        f"The model's loss is {baseline - result['eval_loss']:.2f} nats below the unigram "
        f"baseline: its perplexity is {math.exp(baseline - result['eval_loss']):.1f}× lower.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
