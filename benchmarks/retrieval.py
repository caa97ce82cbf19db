"""Retrieval: BM25 against sentence encoders, recall@1, recall@5 and MRR on two collections.

    PYTHONPATH=. python benchmarks/retrieval.py --out benchmarks/results/retrieval.md

Collections:

(a) tinyworld: each fact asked once in the held-out question phrasing ("Name the capital city
    of Japan."), searched among every fact sentence (``tinyworld_pairs``); right = any
    sentence of that fact.
(b) Python's help topics (``pydoc_data.topics``): paragraphs of 3+ sentences; for a seeded
    set of them one sentence is held out as the query and the paragraph without it is the
    passage to find, among every other paragraph.

Retrievers: BM25 (``rank-bm25``'s BM25Okapi on lowercased words: a well-kept library, not a
hand-written one), all-MiniLM-L6-v2 zero-shot (when its wheel is installed), and tinymlm's
encoder (mean pooling) untrained, MLM-pretrained, and MLM-pretrained then contrastively
trained (``--task retrieval``'s objective) on that collection's training pairs: tinyworld's
training question phrasings; for the help topics, held-out-sentence -> rest-of-paragraph
pairs made from the paragraphs that are not queried. The MLM pretraining reads the whole
collection's text (no labels), as an index would.

Accuracy only: the runs share the machine's cores with other work, so no timing is published.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinymlm.data import python_docs_corpus  # noqa: E402
from tinymlm.fileio import atomic_write_text  # noqa: E402
from tinymlm.finetune import loop_settings as contrastive_settings  # noqa: E402
from tinymlm.objectives import TrainConfig  # noqa: E402
from tinymlm.objectives.contrastive import (  # noqa: E402
    ContrastiveConfig,
    ContrastiveTraining,
    RetrievalData,
    retrieval_metrics,
    tinyworld_pairs,
)
from tinymlm.pretrained import minilm_path  # noqa: E402
from tinymlm.sentence_encoder import SentenceEncoder  # noqa: E402
from tinymlm.train import train  # noqa: E402
from tinymlm.trainer import Trainer  # noqa: E402

SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(\"'])")
WORD = re.compile(r"\w+")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the help-topics collection ------------------------------------------------------------------


def help_topics(n_queries: int, seed: int = 0) -> RetrievalData:
    """Queries: one held-out sentence of each of ``n_queries`` paragraphs; the pool: those
    paragraphs without it, and every other paragraph whole. Training pairs come from the
    other paragraphs only: each sentence of 6+ words -> the rest of its paragraph."""
    paragraphs = []
    for doc in python_docs_corpus():
        sentences = [s.strip() for s in SENTENCE.split(" ".join(doc.split())) if s.strip()]
        if len(sentences) >= 3 and 20 <= len(doc.split()) <= 250:
            paragraphs.append(sentences)
    rng = np.random.default_rng([seed, 20])
    order = rng.permutation(len(paragraphs))
    queried, others = order[:n_queries], order[n_queries:]
    queries, pool, gold = [], [], []
    for p in queried:
        sentences = paragraphs[p]
        long = [i for i, s in enumerate(sentences) if len(s.split()) >= 6] or [0]
        held = long[int(rng.integers(len(long)))]
        queries.append(sentences[held])
        gold.append([len(pool)])
        pool.append(" ".join(s for i, s in enumerate(sentences) if i != held))
    train = []
    for p in others:
        sentences = paragraphs[p]
        pool.append(" ".join(sentences))
        train += [(s, " ".join(sentences[:i] + sentences[i + 1:]))
                  for i, s in enumerate(sentences) if len(s.split()) >= 6]
    train = [train[i] for i in rng.permutation(len(train))]
    return RetrievalData("help topics", train, queries, pool, gold)


# --- the retrievers ------------------------------------------------------------------------------


def bm25_scores(data: RetrievalData) -> np.ndarray:
    from rank_bm25 import BM25Okapi

    def words(text):
        return WORD.findall(text.lower())

    bm25 = BM25Okapi([words(p) for p in data.eval_passages])
    return np.stack([bm25.get_scores(words(q)) for q in data.eval_queries])  # (Q, N)


def encoder_scores(encoder: SentenceEncoder, data: RetrievalData) -> np.ndarray:
    pool = encoder.encode(data.eval_passages, batch_size=64)  # (N, H)
    queries = encoder.encode(data.eval_queries, batch_size=64)  # (Q, H)
    return queries @ pool.T  # (Q, N)


def pretrain(corpus: list[str], steps: int, run_dir: Path, batch_size: int) -> Path:
    """An MLM run with the trainer's defaults for the corpus, ``steps`` of ``batch_size``."""
    cfg = TrainConfig(corpus=corpus, steps=steps, batch_size=batch_size, eval_every=steps,
                      save_every=steps)
    train(cfg, run_dir, log=log)
    return run_dir


def contrastive(model_dir: str, data: RetrievalData, steps: int, max_length: int,
                run_dir: Path, batch_size: int) -> tuple[SentenceEncoder, ContrastiveConfig]:
    cfg = ContrastiveConfig(model=str(model_dir), steps=steps, max_length=max_length,
                            eval_every=steps, batch_size=batch_size, lr=1e-3)
    objective = ContrastiveTraining(cfg, log=log, data=data)  # the collection's own pairs
    Trainer(objective, contrastive_settings(cfg), run_dir, log=log,
            command="benchmarks/retrieval.py").fit()
    return SentenceEncoder.from_pretrained(run_dir), cfg


def untrained(model_dir: Path) -> SentenceEncoder:
    """The same architecture and vocabulary as the pretrained encoder, randomly initialised."""
    from tinymlm import manual_seed
    from tinymlm.checkpoint import read_config
    from tinymlm.nn.bert import BertModel

    trained = SentenceEncoder.from_pretrained(model_dir)
    manual_seed(0)
    return SentenceEncoder(BertModel(read_config(model_dir)), trained.tokenizer,
                           max_seq_length=trained.max_seq_length)


# --- the run -------------------------------------------------------------------------------------


def evaluate(name: str, data: RetrievalData, scores: np.ndarray) -> dict:
    metrics = retrieval_metrics(scores, data.eval_gold)
    log(f"{data.name} / {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return {"retriever": name, **metrics}


def commit() -> str:
    """The commit, and the package's files that differ from it (they ran too)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    changed = [line[3:] for line in git("status", "--porcelain", "tinymlm").splitlines()]
    return (git("rev-parse", "--short", "HEAD").strip() or "unknown") + (
        f" with uncommitted changes to {', '.join(changed)}" if changed else "")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tinyworld-mlm-steps", type=int, default=200)
    p.add_argument("--tinyworld-contrastive-steps", type=int, default=250)
    p.add_argument("--help-mlm-steps", type=int, default=40)
    p.add_argument("--help-contrastive-steps", type=int, default=60)
    p.add_argument("--help-queries", type=int, default=150)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    command = "PYTHONPATH=. python benchmarks/retrieval.py " + " ".join(sys.argv[1:])
    minilm = minilm_path()
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        docs = tmp / "python_docs.txt"
        docs.write_text("\n\n".join(python_docs_corpus()), encoding="utf-8")
        tinyworld = tinyworld_pairs(seed=0)
        tinyworld.name = "tinyworld questions"
        # (data, MLM corpus, MLM steps, MLM batch, contrastive steps, contrastive length):
        # small budgets, so that the whole run stays near 15 minutes on a shared 2-core CPU
        collections = [
            (tinyworld, ["tinyworld"], args.tinyworld_mlm_steps, 128,
             args.tinyworld_contrastive_steps, 32),
            (help_topics(args.help_queries), [str(docs)], args.help_mlm_steps, 32,
             args.help_contrastive_steps, 64),
        ]
        for data, corpus, mlm_steps, mlm_batch, steps, max_length in collections:
            log(f"{data.name}: {len(data.eval_queries)} queries over {len(data.eval_passages)} "
                f"passages, {len(data.train)} training pairs")
            rows = [evaluate("BM25 (rank-bm25, BM25Okapi)", data, bm25_scores(data))]
            if minilm is not None:
                rows.append(evaluate("all-MiniLM-L6-v2, zero-shot", data,
                                     encoder_scores(SentenceEncoder.from_pretrained(minilm),
                                                    data)))
            run = pretrain(corpus, mlm_steps, tmp / f"mlm-{len(tables)}", mlm_batch)
            rows.append(evaluate("tinymlm tiny, untrained", data,
                                 encoder_scores(untrained(run), data)))
            rows.append(evaluate(f"tinymlm tiny, MLM ({mlm_steps} steps of {mlm_batch})", data,
                                 encoder_scores(SentenceEncoder.from_pretrained(run), data)))
            encoder, cfg = contrastive(run, data, steps, max_length,
                                       tmp / f"contrastive-{len(tables)}", 32)
            rows.append(evaluate(f"tinymlm tiny, MLM + contrastive ({cfg.steps} steps of "
                                 f"{cfg.batch_size} pairs, τ {cfg.temperature}, max length "
                                 f"{max_length})", data,
                                 encoder_scores(encoder, data)))
            tables[data.name] = (data, rows)

    lines = ["# Retrieval: BM25 and sentence encoders", "",
             f"- date {time.strftime('%Y-%m-%d %H:%M')} UTC, commit {commit()}",
             f"- command: `{command}`",
             "- accuracy only (the machine's 2 cores were shared with other work: no timing)",
             ""]
    for name, (data, rows) in tables.items():
        lines += [f"## {name}: {len(data.eval_queries)} queries, {len(data.eval_passages)} "
                  "passages", "",
                  "| retriever | recall@1 | recall@5 | MRR |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {r['retriever']} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | "
                  f"{r['mrr']:.3f} |" for r in rows]
        mlm, tuned = rows[-2], rows[-1]
        verdict = "improves" if tuned["recall@1"] > mlm["recall@1"] else "does NOT improve"
        lines += ["", f"Contrastive training {verdict} recall@1 over the raw MLM encoder "
                  f"({mlm['recall@1']:.3f} -> {tuned['recall@1']:.3f}).", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
