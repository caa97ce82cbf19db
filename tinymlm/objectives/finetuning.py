"""Fine-tuning objectives: a new head on a pretrained encoder, trained on a downstream task.

The task (``tinymlm.data.tasks``) says what kind of head it needs: sequence classification
(``verify`` and your classification data), token classification (``entities``, tagging) or
span question answering (``qa``). Metrics: accuracy; word accuracy and entity F1; SQuAD's
exact match and F1 (``tinymlm.metrics``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinymlm import backend
from tinymlm.autograd import no_grad
from tinymlm.data import tasks as task_data
from tinymlm.errors import UsageError
from tinymlm.metrics import qa_metrics, tagging_metrics
from tinymlm.nn.heads import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from tinymlm.objectives.base import MODEL_SIZES, Objective, bert_config, train_flops
from tinymlm.runs import step_rows

HEADS = {
    "classification": BertForSequenceClassification,
    "tagging": BertForTokenClassification,
    "qa": BertForQuestionAnswering,
}
MAX_ANSWER_TOKENS = 16  # the longest span QA predicts


@dataclass
class FinetuneConfig:
    """The settings of a fine-tuning run (saved as finetune_config.json; --resume reads them)."""

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
    kernels: str = "auto"

    def check(self) -> None:
        """Raise UsageError on a setting that cannot run, naming the option."""
        for name in ("steps", "batch_size", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, "
                                 f"got {getattr(self, name)}")
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
            raise UsageError(f"--task {self.task!r} is neither a built-in task "
                             f"({', '.join(task_data.BUILTIN_TASKS)}) nor an existing .jsonl file")
        if self.model != "none" and not (Path(self.model) / "config.json").is_file():
            raise UsageError(f"--model {self.model}: not a model folder (no config.json); give "
                             "a folder written by tinymlm.train or save_pretrained, or 'none'")


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
            raise UsageError(f"--model {cfg.model} has no vocab.txt: save the tokenizer there "
                             "(tok.save_pretrained) so the model reads the ids it was trained on")
        return BertTokenizer.from_pretrained(cfg.model)
    if cfg.vocab:
        return BertTokenizer(cfg.vocab)
    return BertTokenizer.from_vocab(tinyworld.vocabulary())


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


def trim(arrays: dict, rows) -> dict:
    """Rows of every array, cut to the longest real row of the batch (less padding)."""
    batch = {k: v[rows] for k, v in arrays.items()}
    width = max(1, int(batch["attention_mask"].sum(axis=1).max()))
    return {k: (v[:, :width] if v.ndim == 2 else v) for k, v in batch.items()}


class FineTuning(Objective):
    """A task's head on a pretrained encoder (``cfg.model``) or a random one (``"none"``)."""

    def __init__(self, cfg: FinetuneConfig, log=print):
        self.cfg, self.log = cfg, log
        try:  # the task's files and the model folder's vocabulary are the user's input
            self.task = load_task(cfg)
            self.tokenizer = load_tokenizer(cfg)
            self.train_arrays = task_data.encode(self.task, self.task.train, self.tokenizer,
                                                 cfg.max_length)
            self.eval_arrays = task_data.encode(self.task, self.task.eval, self.tokenizer,
                                                cfg.max_length)
        except (OSError, ValueError) as e:
            raise UsageError(str(e)) from e
        self.title = f"fine-tuning on {self.task.name}"

    def build_model(self):
        cfg, task = self.cfg, self.task
        head = HEADS[task.task_type]
        labels = {"id2label": task.labels} if task.task_type != "qa" else {}
        backend.manual_seed(cfg.seed)  # the new head's initialisation
        if cfg.model == "none":
            config = bert_config(cfg.model_size, len(self.tokenizer), cfg.max_length, 0.0)
            return head(config, **labels)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = head.from_pretrained(cfg.model, dtype=np.float32, **labels)
            except (OSError, ValueError) as e:  # a damaged or foreign folder
                raise UsageError(str(e)) from e
        for w in caught:
            self.log(f"note: {w.message}")
        if len(self.tokenizer) > model.config.vocab_size:  # ids with no embedding row
            raise UsageError(f"--model {cfg.model}: its vocab.txt has {len(self.tokenizer)} "
                             f"tokens but the model only {model.config.vocab_size}; the folder "
                             "is inconsistent")
        return model

    def batch(self, step: int, micro: int) -> dict:
        rows = step_rows(self.cfg.seed, step, micro, self.cfg.batch_size, 1,
                         len(self.train_arrays["input_ids"]))
        return trim(self.train_arrays, rows)

    def flops(self, model, batch: dict) -> float:
        B, S = batch["input_ids"].shape
        return train_flops(model.config, B, S, 0)  # the heads' own cost is negligible

    def evaluate(self, model) -> dict:
        """Loss and the task's metrics on the evaluation examples."""
        task, arrays = self.task, self.eval_arrays
        tagging = task.task_type == "tagging"
        model.eval()
        total_loss, outputs = 0.0, []
        n = len(arrays["input_ids"])
        with no_grad():
            for start in range(0, n, self.cfg.batch_size):
                batch = trim(arrays, slice(start, start + self.cfg.batch_size))
                out = model(**batch)
                weight = int((batch["labels"] != task_data.IGNORE).sum()) if tagging else \
                    len(batch["input_ids"])
                total_loss += float(out.loss.item()) * weight
                if task.task_type == "qa":
                    outputs.append((out.start_logits.numpy(), out.end_logits.numpy(), batch))
                else:
                    outputs.append((out.logits.numpy(), batch))
        model.train()
        count = int((arrays["labels"] != task_data.IGNORE).sum()) if tagging else n
        result = {"eval_loss": total_loss / max(count, 1)}
        if task.task_type == "classification":
            predicted = np.concatenate([logits.argmax(-1) for logits, _ in outputs])  # (N,)
            result["eval_accuracy"] = float((predicted == arrays["labels"]).mean())
        elif tagging:
            result.update(tagging_metrics(*self._word_tags(outputs)))
        else:
            result.update(qa_metrics(self._answers(outputs), [e["answer"] for e in task.eval]))
        return result

    def _word_tags(self, outputs) -> tuple[list[list[str]], list[list[str]]]:
        """Predicted and gold tags of every word (its first sub-token) of every sentence."""
        predicted, gold = [], []
        for logits, batch in outputs:
            for row_logits, row_labels in zip(logits, batch["labels"]):  # (S, C), (S,)
                scored = row_labels != task_data.IGNORE
                predicted.append([self.task.labels[k] for k in row_logits[scored].argmax(-1)])
                gold.append([self.task.labels[k] for k in row_labels[scored]])
        return predicted, gold

    def _answers(self, outputs) -> list[str]:
        """The best span of each passage, as text."""
        answers = []
        for start_logits, end_logits, batch in outputs:
            for b in range(len(start_logits)):
                context = (batch["token_type_ids"][b] == 1) & (batch["attention_mask"][b] == 1)
                context[np.flatnonzero(context)[-1:]] = False  # not the closing [SEP]
                i, j = best_span(start_logits[b], end_logits[b], context)
                answers.append(self.tokenizer.decode(batch["input_ids"][b][i : j + 1]))
        return answers

    def summary(self, model) -> str:
        task = self.task
        return (f"task {task.name} ({task.task_type}): {len(task.train)} training and "
                f"{len(task.eval)} evaluation examples; model {self.cfg.model}, "
                f"{model.num_parameters() / 1e6:.2f}M parameters")

