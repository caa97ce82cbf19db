"""Fine-tune BERT on a downstream task: ``python -m tinymlm.finetune --task ... --model DIR``.

    python -m tinymlm.finetune --task verify --model runs/tinyworld-tiny-...   # pretrained
    python -m tinymlm.finetune --task verify --model none                      # random init
    python -m tinymlm.finetune --task my_data.jsonl --model DIR                # your data

Tasks: ``verify`` (is a statement of a fact true?), ``entities`` (the kind of every word) and
``qa`` (a span of a passage answers a question), generated from tinyworld with held-out facts
or phrasings (see ``tinymlm.data.tasks``), or a JSON-lines file of your own examples in the
format documented there (``--task-type`` names its kind when the keys do not; ``--eval FILE``
gives evaluation examples, otherwise a seeded tenth is held out).

``--model DIR`` loads the encoder of a pretrained folder (a training run, a BertModel or a
BertForMaskedLM folder, or a fine-tuned one) and its tokenizer, and puts a new head on it.
``--model none`` trains the same head on a randomly initialised encoder of ``--model-size``
with the tinyworld vocabulary (or ``--vocab``): the "not pretrained" baseline.

Metrics: accuracy for classification; word accuracy and entity F1 for tagging; exact match
and F1 (SQuAD's) for QA, where ``eval_accuracy`` is the exact match. The run folder has the
layout of ``tinymlm.train``'s: a Hugging Face model folder at its top level (through the
``current`` link to ``checkpoints/step-N``), ``finetune_config.json``, ``metrics.jsonl``
(``step, loss, lr, tokens_per_s`` rows and ``eval_*`` rows) and ``loss_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import string
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tinymlm import backend
from tinymlm.autograd import no_grad
from tinymlm.checkpoint import CheckpointError
from tinymlm.data import tasks as task_data
from tinymlm.fileio import atomic_write_json, atomic_write_text
from tinymlm.nn.bert import BertConfig
from tinymlm.nn.heads import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from tinymlm.optim import AdamW, clip_grad_norm_, lr_at, param_groups
from tinymlm.runs import epoch_rows, plot_curves, publish_checkpoint
from tinymlm.train import MODEL_SIZES, UsageError

HEADS = {
    "classification": BertForSequenceClassification,
    "tagging": BertForTokenClassification,
    "qa": BertForQuestionAnswering,
}
MAX_ANSWER_TOKENS = 16  # the longest span QA predicts


@dataclass
class FinetuneConfig:
    """The settings of a fine-tuning run (saved as finetune_config.json)."""

    task: str = "verify"
    model: str = "none"
    task_type: str | None = None
    eval_data: str | None = None
    vocab: str | None = None
    model_size: str = "tiny"
    steps: int = 200
    batch_size: int = 32
    max_length: int = 64
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    eval_every: int = 100
    log_every: int = 10
    seed: int = 0

    def check(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be a positive integer, "
                    f"got {getattr(self, name)}"
                )
        if not 8 <= self.max_length <= 512:
            raise UsageError(f"--max-length must be between 8 and 512, got {self.max_length}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        if self.warmup_steps < 0:
            raise UsageError(f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        if self.model_size not in MODEL_SIZES:
            raise UsageError(f"--model-size must be one of {list(MODEL_SIZES)}")
        if self.task_type is not None and self.task_type not in task_data.TASK_TYPES:
            raise UsageError(f"--task-type must be one of {list(task_data.TASK_TYPES)}")
        if self.task not in task_data.BUILTIN_TASKS and not Path(self.task).is_file():
            raise UsageError(
                f"--task {self.task!r} is neither a built-in task "
                f"({', '.join(task_data.BUILTIN_TASKS)}) nor an existing .jsonl file"
            )
        if self.model != "none" and not (Path(self.model) / "config.json").is_file():
            raise UsageError(
                f"--model {self.model}: not a model folder (no config.json); give "
                "a folder written by tinymlm.train or save_pretrained, or 'none'"
            )


# --- task, tokenizer and model ---------------------------------------------------------------


def load_task(cfg: FinetuneConfig) -> task_data.Task:
    if cfg.task in task_data.BUILTIN_TASKS:
        if cfg.eval_data:
            raise UsageError("--eval is for your own .jsonl task; the built-in tasks make theirs")
        return task_data.builtin_task(cfg.task, seed=cfg.seed)
    return task_data.user_task(cfg.task, cfg.task_type, cfg.eval_data, seed=cfg.seed)


def load_tokenizer(cfg: FinetuneConfig):
    from tinymlm.data import tinyworld
    from tinymlm.tokenizer import BertTokenizer

    if cfg.model != "none":
        if not (Path(cfg.model) / "vocab.txt").is_file():
            raise UsageError(
                f"--model {cfg.model} has no vocab.txt: save the tokenizer there "
                "(tok.save_pretrained) so the model reads the ids it was trained on"
            )
        return BertTokenizer.from_pretrained(cfg.model)
    if cfg.vocab:
        return BertTokenizer(cfg.vocab)
    return BertTokenizer.from_vocab(tinyworld.vocabulary())


def make_model(cfg: FinetuneConfig, task: task_data.Task, vocab_size: int, log):
    """A pretrained encoder with a new head, or (``--model none``) a random one."""
    head = HEADS[task.task_type]
    labels = {"id2label": task.labels} if task.task_type != "qa" else {}
    backend.manual_seed(cfg.seed)  # the new head's initialisation
    if cfg.model == "none":
        layers, hidden = MODEL_SIZES[cfg.model_size]
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),
            intermediate_size=4 * hidden,
            max_position_embeddings=max(512, cfg.max_length),
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        return head(config, **labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = head.from_pretrained(cfg.model, dtype=np.float32, **labels)
    for w in caught:
        log(f"note: {w.message}")
    if vocab_size > model.config.vocab_size:  # ids the embedding table has no row for
        raise UsageError(
            f"--model {cfg.model}: its vocab.txt has {vocab_size} tokens but the model only "
            f"{model.config.vocab_size}; the folder is inconsistent"
        )
    return model


# --- metrics ---------------------------------------------------------------------------------


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) of every entity: BIO tags as spans (an I- without its B- opens one,
    as seqeval does), plain tags as runs of the same tag; "O" is outside."""
    spans, current = set(), None
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = (tag[:2], tag[2:]) if tag[:2] in ("B-", "I-") else ("", tag)
        continues = current is not None and kind == current[0] and prefix != "B-"
        if continues:
            current = (kind, current[1], i)
            continue
        if current is not None:
            spans.add(current)
        current = None if tag == "O" else (kind, i, i)
    return spans


def f1_score(right: int, predicted: int, gold: int) -> float:
    if right == 0:
        return 0.0
    precision, recall = right / predicted, right / gold
    return 2 * precision * recall / (precision + recall)


def tagging_metrics(predicted: list[list[str]], gold: list[list[str]]) -> dict:
    """Word accuracy and micro entity F1 over sentences of word tags."""
    words = sum(len(g) for g in gold)
    right = sum(p == g for ps, gs in zip(predicted, gold) for p, g in zip(ps, gs))
    found = [entity_spans(p) for p in predicted]
    truth = [entity_spans(g) for g in gold]
    hits = sum(len(f & t) for f, t in zip(found, truth))
    return {
        "eval_accuracy": right / max(words, 1),
        "eval_entity_f1": f1_score(hits, sum(map(len, found)), sum(map(len, truth))),
    }


def normalize_answer(text: str) -> list[str]:
    """SQuAD's normalisation: lowercase, no punctuation, no articles; the words."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def qa_metrics(predicted: list[str], gold: list[str]) -> dict:
    """Exact match and word-overlap F1 (SQuAD's), averaged over questions."""
    exact, f1 = 0.0, 0.0
    for p, g in zip(predicted, gold, strict=True):
        p, g = normalize_answer(p), normalize_answer(g)
        exact += p == g
        common = sum((Counter(p) & Counter(g)).values())
        f1 += float(p == g) if not p or not g else f1_score(common, len(p), len(g))
    n = max(len(gold), 1)
    return {"eval_exact_match": exact / n, "eval_f1": f1 / n, "eval_accuracy": exact / n}


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, context: np.ndarray) -> tuple:
    """The span (i, j) with i <= j < i + MAX_ANSWER_TOKENS, both in the context, that
    maximises start_logits[i] + end_logits[j]."""
    score = start_logits[:, None] + end_logits[None, :]  # (S, S)
    S = len(start_logits)
    i, j = np.indices((S, S))
    allowed = (j >= i) & (j < i + MAX_ANSWER_TOKENS) & context[:, None] & context[None, :]
    score = np.where(allowed, score, -np.inf)
    flat = int(np.argmax(score))
    return divmod(flat, S)


# --- evaluation ------------------------------------------------------------------------------


def evaluate(model, task, examples, arrays, tokenizer, cfg) -> dict:
    """Loss and the task's metrics on the evaluation examples."""
    model.eval()
    total_loss, outputs = 0.0, []
    n = len(arrays["input_ids"])
    with no_grad():
        for start in range(0, n, cfg.batch_size):
            batch = _slice(arrays, slice(start, start + cfg.batch_size))
            out = model(**batch)
            weight = (
                len(batch["input_ids"])
                if task.task_type != "tagging"
                else int((batch["labels"] != task_data.IGNORE).sum())
            )
            total_loss += float(out.loss.item()) * weight
            if task.task_type == "qa":
                outputs.append((out.start_logits.numpy(), out.end_logits.numpy(), batch))
            else:
                outputs.append((out.logits.numpy(), batch))
    model.train()
    count = n if task.task_type != "tagging" else int((arrays["labels"] != -100).sum())
    result = {"eval_loss": total_loss / max(count, 1)}
    if task.task_type == "classification":
        predicted = np.concatenate([logits.argmax(-1) for logits, _ in outputs])
        result["eval_accuracy"] = float((predicted == arrays["labels"]).mean())
    elif task.task_type == "tagging":
        predicted, gold = [], []
        for logits, batch in outputs:
            for row_logits, row_labels in zip(logits, batch["labels"]):
                scored = row_labels != task_data.IGNORE  # the first sub-token of each word
                predicted.append([task.labels[k] for k in row_logits[scored].argmax(-1)])
                gold.append([task.labels[k] for k in row_labels[scored]])
        result.update(tagging_metrics(predicted, gold))
    else:
        predicted = []
        for start_logits, end_logits, batch in outputs:
            for b in range(len(start_logits)):
                context = (batch["token_type_ids"][b] == 1) & (batch["attention_mask"][b] == 1)
                context[np.flatnonzero(context)[-1:]] = False  # not the closing [SEP]
                i, j = best_span(start_logits[b], end_logits[b], context)
                predicted.append(tokenizer.decode(batch["input_ids"][b][i : j + 1]))
        result.update(qa_metrics(predicted, [e["answer"] for e in examples]))
    return result


def batch_rows(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """The training rows of ``step`` (1-based): epochs of seeded permutations of the n rows."""
    return epoch_rows(seed, (step - 1) * batch_size, batch_size, n)


def _slice(arrays: dict, rows) -> dict:
    """Rows of every array, cut to the longest real row of the batch (less padding)."""
    batch = {k: v[rows] for k, v in arrays.items()}
    width = max(1, int(batch["attention_mask"].sum(axis=1).max()))
    return {k: (v[:, :width] if v.ndim == 2 else v) for k, v in batch.items()}


# --- the run folder --------------------------------------------------------------------------


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, result: dict) -> None:
    """The model and tokenizer of ``step`` and its metrics, published as one checkpoint."""

    def write(step_dir: Path) -> None:
        model.save_pretrained(step_dir)
        tokenizer.save_pretrained(step_dir)
        atomic_write_json(step_dir / "trainer_state.json", {"step": step, **result})

    publish_checkpoint(run_dir, step, write)


# --- the loop --------------------------------------------------------------------------------


def run(cfg: FinetuneConfig, run_dir: Path, task: task_data.Task, tokenizer, log=print) -> dict:
    """Fine-tune as ``cfg`` says, writing into ``run_dir``; returns the final metrics."""
    from tqdm import tqdm

    model = make_model(cfg, task, len(tokenizer), log)
    train_arrays = task_data.encode(task, task.train, tokenizer, cfg.max_length)
    eval_arrays = task_data.encode(task, task.eval, tokenizer, cfg.max_length)
    optimizer = AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8
    )
    model.train()
    log(
        f"task {task.name} ({task.task_type}): {len(task.train)} training and {len(task.eval)} "
        f"evaluation examples; model {cfg.model}, {model.num_parameters() / 1e6:.2f}M parameters"
    )
    rows: list[dict] = []
    n_train = len(train_arrays["input_ids"])
    window_loss, window_tokens, window_steps, window_start = 0.0, 0, 0, time.perf_counter()
    result: dict = {}
    bar = tqdm(
        total=cfg.steps,
        desc=f"fine-tuning {task.name}",
        unit="step",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None,
    )
    for step in range(1, cfg.steps + 1):
        backend.manual_seed(cfg.seed * 1_000_003 + step)  # dropout: a function of the step
        batch = _slice(train_arrays, batch_rows(step, cfg.batch_size, n_train, cfg.seed))
        out = model(**batch)
        out.loss.backward()
        clip_grad_norm_(model.parameters(), cfg.clip_norm)
        optimizer.set_lr(lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, "linear"))
        optimizer.step()
        optimizer.zero_grad()
        loss = float(out.loss.item())
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} at step {step}: lower --lr")
        window_loss += loss
        window_steps += 1
        window_tokens += int(batch["attention_mask"].sum())
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - window_start
            rows.append(
                {
                    "step": step,
                    "loss": window_loss / window_steps,
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens_per_s": window_tokens / elapsed,
                }
            )
            bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}")
            window_loss, window_tokens, window_steps = 0.0, 0, 0
            window_start = time.perf_counter()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            result = evaluate(model, task, task.eval, eval_arrays, tokenizer, cfg)
            rows.append({"step": step, **result})
            shown = ", ".join(f"{k[5:]} {v:.3f}" for k, v in result.items())
            bar.write(f"step {step}: {shown}", file=sys.stderr)
            save_checkpoint(run_dir, step, model, tokenizer, result)
            atomic_write_text(
                run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows)
            )
            plot_curves(run_dir, rows, f"fine-tuning on {task.name}: {run_dir.name}",
                        "held-out accuracy")
        bar.update(1)
    bar.close()
    return {"task": task.name, "model": cfg.model, "step": cfg.steps, **result}


def finetune(task: str, model: str = "none", out=None, **settings) -> dict:
    """Fine-tune ``model`` (a folder, or "none") on ``task`` (a built-in name or a .jsonl file);
    ``settings`` are FinetuneConfig's fields (steps, batch_size, lr, seed, ...). Returns the
    final evaluation metrics; the run folder is ``out`` (default runs/finetune-<task>-<time>)."""
    log = settings.pop("log", None) or (lambda msg: print(msg, file=sys.stderr, flush=True))
    cfg = FinetuneConfig(task=str(task), model=str(model), **settings)
    cfg.check()
    task = load_task(cfg)  # bad data is reported before anything is written
    tokenizer = load_tokenizer(cfg)
    run_dir = Path(out or f"runs/finetune-{Path(cfg.task).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UsageError(f"run folder {run_dir} already exists: choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "finetune_config.json", asdict(cfg))
    log(f"run folder: {run_dir}")
    return run(cfg, run_dir, task, tokenizer, log=log)


# --- the command line ------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m tinymlm.finetune", description=__doc__.split("\n")[0]
    )
    d = FinetuneConfig()
    p.add_argument(
        "--task", required=True, help="verify, entities, qa, or a .jsonl file of your examples"
    )
    p.add_argument(
        "--model",
        required=True,
        help="a pretrained model folder, or 'none' for a randomly initialised encoder",
    )
    p.add_argument(
        "--task-type",
        choices=list(task_data.TASK_TYPES),
        default=None,
        help="the kind of a .jsonl task (default: guessed from its keys)",
    )
    p.add_argument(
        "--eval",
        dest="eval_data",
        default=None,
        metavar="FILE",
        help="evaluation examples for a .jsonl task (default: a tenth held out)",
    )
    p.add_argument("--vocab", default=None, help="vocab.txt for --model none (default tinyworld's)")
    p.add_argument(
        "--model-size",
        choices=list(MODEL_SIZES),
        default=d.model_size,
        help="the encoder of --model none",
    )
    for name, kind in [
        ("steps", int),
        ("batch-size", int),
        ("max-length", int),
        ("lr", float),
        ("warmup-steps", int),
        ("weight-decay", float),
        ("clip-norm", float),
        ("eval-every", int),
        ("log-every", int),
        ("seed", int),
    ]:
        default = getattr(d, name.replace("-", "_"))
        p.add_argument(f"--{name}", type=kind, default=default, help=f"default {default}")
    p.add_argument(
        "--out", default=None, help="the run folder (default runs/finetune-<task>-<time>)"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("task", "model", "out")}
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        start = time.perf_counter()
        result = finetune(args.task, args.model, out=args.out, log=log, **settings)
        log(f"done in {time.perf_counter() - start:.0f} s")
        print(json.dumps(result))
        return 0
    except (UsageError, CheckpointError, FileNotFoundError, ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
