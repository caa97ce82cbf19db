"""Contrastive training: an MLM-pretrained encoder becomes a sentence encoder.

A masked language model's mean-pooled hidden states are poor sentence embeddings: they fill a
narrow cone, so unrelated sentences already have a high cosine (Ethayarajh 2019). Contrastive
training pulls each query toward the passage that answers it and pushes it away from the
other passages of the batch, its *in-batch negatives*. For B pairs with unit embeddings
u_i (query i) and v_j (passage j), and a scale s = 1/τ (τ the temperature):

    logits_ij = s · u_i·v_j                                        (B, B)
    L = (1/B) Σ_i −log( exp(logits_ii) / Σ_j exp(logits_ij) )     InfoNCE (van den Oord 2018)

that is, cross-entropy of each row of logits against the diagonal: a B-way classification
of "which passage is mine". A small τ (0.05, SimCSE's) sharpens the softmax; with
``learn_temperature`` log s is a parameter trained with the rest (CLIP's recipe; like every
weight it takes AdamW's weight decay, lr · wd · log s per step, which is small). A passage
that appears twice in a batch would be its own negative; such duplicates are masked out.

SimCSE (Gao et al. 2021, ``simcse=True``): no pairs needed. Each sentence is the query and,
passed through the encoder a second time with other dropout masks, its own positive. Both
sides of a batch go through the encoder as one (2B, S) batch, so the two copies of a sentence
get different dropout masks and the step costs one forward and one backward pass.

Data: tinyworld's questions and the sentences that answer them ("What is the capital of
Japan?" -> "Tokyo is the capital of Japan."), training in the qa task's training question
phrasings and evaluated in its held-out ones; or your JSON lines ``{"query": ...,
"passage": ...}``. Evaluation searches every question against the pool of all passages and
reports recall@1 (``eval_accuracy``), recall@5 and the mean reciprocal rank.

The run folder holds a sentence-transformers folder (``SentenceEncoder.save_pretrained``),
and ``contrastive.json`` with the temperature.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinymlm import backend, ops
from tinymlm.autograd import raw
from tinymlm.checkpoint import CheckpointError, load_model, read_config
from tinymlm.data import tasks, tinyworld
from tinymlm.errors import UsageError
from tinymlm.fileio import atomic_write_json
from tinymlm.nn import functional as F
from tinymlm.nn.bert import BertModel
from tinymlm.nn.module import Module, Parameter
from tinymlm.objectives.base import MODEL_SIZES, Objective, bert_config, train_flops
from tinymlm.runs import step_rows
from tinymlm.sentence_encoder import (
    POOLING_MODES,
    SentenceEncoder,
    l2_normalize,
    pad,
    tokenize,
)

TASK = "retrieval"
TEMPERATURE_FILE = "contrastive.json"
EXCLUDED = -1e4  # the logit of a masked-out duplicate: exp of it is 0 in float32 and float64
RECALL_AT = (1, 5)
CONTRASTIVE_OPTIONS = ("pooling", "temperature", "learn_temperature", "simcse", "dropout")


@dataclass
class ContrastiveConfig:
    """The settings of a contrastive run (saved as finetune_config.json, like fine-tuning's)."""

    task: str = TASK  # "retrieval" (tinyworld) or a .jsonl file of {"query", "passage"} pairs
    model: str = "none"
    task_type: str = TASK
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
    pooling: str = "mean"
    temperature: float = 0.05
    learn_temperature: bool = False
    simcse: bool = False
    dropout: float = 0.1  # the encoder's dropout while training (SimCSE's noise)

    def check(self) -> None:
        """Raise UsageError on a setting that cannot run, naming the option."""
        for name in ("steps", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, "
                                 f"got {getattr(self, name)}")
        if self.batch_size < 2:
            raise UsageError(f"--batch-size must be at least 2 (the other pairs of a batch "
                             f"are the negatives), got {self.batch_size}")
        if not 8 <= self.max_length <= 512:
            raise UsageError(f"--max-length must be between 8 and 512, got {self.max_length}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UsageError(f"--temperature must be a positive number, got {self.temperature}")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.simcse and self.dropout == 0:
            raise UsageError("--simcse needs dropout: its positives differ only by it")
        if self.pooling not in POOLING_MODES:
            raise UsageError(f"--pooling must be one of {list(POOLING_MODES)}")
        if self.model_size not in MODEL_SIZES:
            raise UsageError(f"--model-size must be one of {list(MODEL_SIZES)}")
        if self.task != TASK and not Path(self.task).is_file():
            raise UsageError(f"--task {self.task!r}: give 'retrieval' (tinyworld's questions) "
                             "or an existing .jsonl file of query-passage pairs")
        if self.model != "none" and not (Path(self.model) / "config.json").is_file():
            raise UsageError(f"--model {self.model}: not a model folder (no config.json); give "
                             "a folder written by tinymlm.train or save_pretrained, or 'none'")


# --- the data: query-passage pairs ---------------------------------------------------------------


@dataclass
class RetrievalData:
    """Training pairs, and the evaluation: queries searched in a pool of passages."""

    name: str
    train: list[tuple[str, str]]  # (query, passage)
    eval_queries: list[str]
    eval_passages: list[str]  # the pool every query is searched in
    eval_gold: list[list[int]]  # per query: the pool rows that answer it


def tinyworld_pairs(seed: int = 0) -> RetrievalData:
    """Questions about tinyworld's facts and the sentences that state them.

    Training: every fact sentence of tinyworld's training phrasings, asked in the qa task's
    training question phrasings. Evaluation: one question per fact in the held-out phrasing,
    searched among every fact sentence; the right answers are all the sentences of its fact.
    """
    # tasks' qa helpers: the question of a probe in a phrasing, and the probe's sentence
    probes = [p for p in tinyworld.fact_probes("train") if p.relation in tasks.QUESTIONS]
    sentence = {p: tasks._fill(p, p.answer)[0] for p in probes}
    train = [(tasks._question(template, p), sentence[p])
             for p in probes for template in tasks.QUESTIONS[p.relation][0]]
    order = np.random.default_rng([seed, 20]).permutation(len(train))
    pool = sorted(set(sentence.values()))
    row = {text: i for i, text in enumerate(pool)}
    facts: dict[tuple, list] = {}  # (relation, subject) -> its probes
    for p in probes:
        facts.setdefault((p.relation, p.subject), []).append(p)
    queries, gold = [], []
    for fact_probes in facts.values():
        template = tasks.QUESTIONS[fact_probes[0].relation][1][0]
        queries.append(tasks._question(template, fact_probes[0]))
        gold.append(sorted({row[sentence[p]] for p in fact_probes}))
    return RetrievalData(TASK, [train[i] for i in order], queries, pool, gold)


def is_retrieval(task: str | None, task_type: str | None = None) -> bool:
    """Whether a ``--task`` (and ``--task-type``) asks for contrastive training."""
    if task == TASK or task_type == TASK:
        return True
    return task_type is None and task is not None and looks_like_pairs(task)


def looks_like_pairs(path) -> bool:
    """Whether a .jsonl file's first example is a {"query", "passage"} pair."""
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        example = json.loads(first)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(example, dict) and {"query", "passage"} <= set(example)


def read_pairs(path) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number} is not valid JSON ({e.msg})") from None
        if not (isinstance(example, dict) and isinstance(example.get("query"), str)
                and isinstance(example.get("passage"), str)):
            raise ValueError(f'{path}:{number}: a pair is {{"query": "...", "passage": "..."}}')
        pairs.append((example["query"], example["passage"]))
    if len(pairs) < 2:
        raise ValueError(f"{path} holds {len(pairs)} pair(s); contrastive training needs more")
    return pairs


def user_pairs(path, eval_path=None, seed: int = 0, eval_fraction: float = 0.1) -> RetrievalData:
    """Your pairs; evaluation is ``eval_path`` or a seeded tenth, searched among its passages."""
    pairs = read_pairs(path)
    if eval_path is not None:
        train, evaluation = pairs, read_pairs(eval_path)
    else:
        order = np.random.default_rng([seed, 4]).permutation(len(pairs))
        n_eval = max(1, round(eval_fraction * len(pairs)))
        evaluation = [pairs[i] for i in order[:n_eval]]
        train = [pairs[i] for i in order[n_eval:]]
    pool = sorted({passage for _, passage in evaluation})
    row = {text: i for i, text in enumerate(pool)}
    answers: dict[str, set] = {}
    for query, passage in evaluation:
        answers.setdefault(query, set()).add(row[passage])
    return RetrievalData(Path(path).stem, train, list(answers), pool,
                         [sorted(g) for g in answers.values()])


# --- the loss and the metrics --------------------------------------------------------------------


def info_nce(queries, passages, scale, exclude=None):
    """InfoNCE with in-batch negatives: the mean over rows of −log softmax(s · U Vᵀ)_ii.

    queries, passages: (B, H) Tensors (unit rows for cosine logits); scale: s = 1/τ, a number
    or a Tensor; exclude: (B, B) booleans, True where a passage must not count as a negative
    (a duplicate of the row's own passage); the diagonal must be False.
    """
    B = queries.shape[0]
    logits = (queries @ passages.transpose(0, 1)) * scale  # (B, B)
    if exclude is not None:
        logits = ops.masked_fill(logits, exclude, EXCLUDED)  # (B, B)
    targets = backend.get_array_module(raw(logits)).arange(B)  # (B,) row i's positive is i
    return F.cross_entropy(logits, targets)


def retrieval_metrics(scores: np.ndarray, gold: list[list[int]]) -> dict[str, float]:
    """recall@k (the share of queries with a right passage among their k best) and the mean
    reciprocal rank of the first right passage, from scores (Q, N) of every query against
    every passage (ties: the earlier passage ranks first)."""
    order = np.argsort(-scores, axis=1, kind="stable")  # (Q, N) best first
    ranks = np.array([1 + int(np.argmax(np.isin(order[q], answers)))
                      for q, answers in enumerate(gold)])  # (Q,) 1-based
    result = {f"recall@{k}": float((ranks <= k).mean()) for k in RECALL_AT}
    result["mrr"] = float((1.0 / ranks).mean())
    return result


# --- the model: the encoder and its temperature --------------------------------------------------


class ContrastiveModel(Module):
    """A BertModel and, with a learned temperature, ``log_scale`` = log(1/τ) (a (1,) Parameter)."""

    def __init__(self, bert: BertModel, temperature: float, learn_temperature: bool):
        super().__init__()
        self.bert = bert
        self.temperature, self.learn_temperature = temperature, learn_temperature
        if learn_temperature:
            log_scale = np.array([-math.log(temperature)], dtype=bert.dtype)  # (1,)
            self.log_scale = Parameter(backend.to_device(log_scale, bert.device))

    @property
    def config(self):
        return self.bert.config

    def scale(self):
        """s = 1/τ: a Tensor when learned, a number when fixed."""
        return self.log_scale.exp() if self.learn_temperature else 1.0 / self.temperature

    def current_temperature(self) -> float:
        return 1.0 / float(raw(self.scale()).reshape(-1)[0]) if self.learn_temperature \
            else self.temperature

    @classmethod
    def from_pretrained(cls, path, dtype=None, device: str = "cpu") -> ContrastiveModel:
        """The model a checkpoint folder holds (the encoder and ``contrastive.json``)."""
        state = json.loads((Path(path) / TEMPERATURE_FILE).read_text())
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="weights in .* not used by BertModel")
            bert = BertModel.from_pretrained(path, dtype=dtype, device=device)
        model = cls(bert, state["temperature"], state["learned"])
        if state["learned"]:
            log_scale = np.array([state["log_scale"]], dtype=bert.dtype)
            model.log_scale.data = backend.to_device(log_scale, device)
        return model


# --- the objective -------------------------------------------------------------------------------


class ContrastiveTraining(Objective):
    """InfoNCE on query-passage pairs (or SimCSE) for a pretrained encoder (``cfg.model``) or a
    random one (``"none"``). ``data`` replaces the pairs ``cfg.task`` names (a benchmark's own
    collection, a test's smaller evaluation)."""

    accuracy_label = "recall@1 (held-out questions)"

    def __init__(self, cfg: ContrastiveConfig, log=print, data: RetrievalData | None = None):
        from tinymlm.tokenizer import BertTokenizer

        self.cfg, self.log = cfg, log
        try:  # the pairs and the model folder's vocabulary are the user's input
            self.task = data or (tinyworld_pairs(cfg.seed) if cfg.task == TASK
                                 else user_pairs(cfg.task, cfg.eval_data, cfg.seed))
            if cfg.model != "none":
                self.tokenizer = BertTokenizer.from_pretrained(cfg.model)
            else:
                self.tokenizer = (BertTokenizer(cfg.vocab) if cfg.vocab else
                                  BertTokenizer.from_vocab(tinyworld.vocabulary()))
        except (OSError, ValueError) as e:
            raise UsageError(str(e)) from e
        if cfg.task == TASK and cfg.eval_data:
            raise UsageError("--eval is for your own .jsonl pairs; tinyworld makes its own")
        kind = "SimCSE" if cfg.simcse else "InfoNCE"
        self.title = f"contrastive training ({kind}) on {self.task.name}"
        # Every distinct training text is tokenised once: the rows of a batch index them.
        queries = [q for q, _ in self.task.train]
        passages = [p for _, p in self.task.train]
        self.texts = sorted(set(passages if cfg.simcse else queries + passages))
        row = {t: i for i, t in enumerate(self.texts)}
        self.query_rows = np.array([row[p if cfg.simcse else q] for q, p in self.task.train])
        self.passage_rows = np.array([row[p] for p in passages])
        self.ids = tokenize(self.tokenizer, self.texts, cfg.max_length)

    def build_model(self) -> ContrastiveModel:
        cfg = self.cfg
        backend.manual_seed(cfg.seed)  # a random encoder's initialisation
        if cfg.model == "none":
            config = bert_config(cfg.model_size, len(self.tokenizer), cfg.max_length,
                                 cfg.dropout)
            bert = BertModel(config)
        else:
            try:
                config = read_config(cfg.model)
                config.hidden_dropout_prob = config.attention_probs_dropout_prob = cfg.dropout
                with warnings.catch_warnings():  # a pretraining run's MLM head is not needed
                    warnings.filterwarnings("ignore", message="weights in .* not used by")
                    bert = load_model(BertModel, cfg.model, dtype=np.float32, config=config)
            except (OSError, CheckpointError) as e:
                raise UsageError(str(e)) from e
            if len(self.tokenizer) > config.vocab_size:
                raise UsageError(f"--model {cfg.model}: its vocab.txt has {len(self.tokenizer)} "
                                 f"tokens but the model only {config.vocab_size}; the folder "
                                 "is inconsistent")
        return ContrastiveModel(bert, cfg.temperature, cfg.learn_temperature)

    def encoder_of(self, model: ContrastiveModel) -> SentenceEncoder:
        return SentenceEncoder(model.bert, self.tokenizer, self.cfg.pooling, self.cfg.max_length)

    def batch(self, step: int, micro: int) -> dict:
        """B pairs as one (2B, S) batch: the B queries, then their B passages; ``exclude``
        (B, B) marks in-batch passages equal to a row's own (not negatives)."""
        rows = step_rows(self.cfg.seed, step, micro, self.cfg.batch_size, 1,
                         len(self.query_rows))
        queries, passages = self.query_rows[rows], self.passage_rows[rows]  # (B,), (B,)
        batch = pad([self.ids[i] for i in np.concatenate([queries, passages])],
                    self.tokenizer.pad_token_id)  # (2B, S)
        exclude = passages[:, None] == passages[None, :]  # (B, B)
        np.fill_diagonal(exclude, False)
        return {**batch, "exclude": exclude}

    def loss(self, model: ContrastiveModel, batch: dict):
        embeddings = l2_normalize(self.encoder_of(model).embed(batch))  # (2B, H)
        B = len(batch["input_ids"]) // 2
        queries, passages = embeddings[:B], embeddings[B:]  # (B, H) each
        exclude = backend.asarray_on(batch["exclude"], raw(embeddings))  # (B, B)
        return info_nce(queries, passages, model.scale(), exclude)

    def flops(self, model, batch: dict) -> float:
        B, S = batch["input_ids"].shape
        return train_flops(model.config, B, S, 0)

    def evaluate(self, model: ContrastiveModel) -> dict:
        """Every held-out query searched among the pool: recall@k, MRR, and the loss of that
        search (cross-entropy over the whole pool, every right passage counting as right)."""
        task, encoder = self.task, self.encoder_of(model)
        batch_size = max(self.cfg.batch_size, 64)
        pool = encoder.encode(task.eval_passages, batch_size, progress=False)  # (N, H)
        queries = encoder.encode(task.eval_queries, batch_size, progress=False)  # (Q, H)
        scores = queries @ pool.T  # (Q, N)
        logits = scores.astype(np.float64) / model.current_temperature()  # (Q, N)
        top = logits.max(axis=1, keepdims=True)  # (Q, 1)
        every = np.log(np.exp(logits - top).sum(axis=1))  # (Q,) log Σ_j, less the max
        right = np.array([np.log(np.exp(logits[q, g] - top[q]).sum())
                          for q, g in enumerate(task.eval_gold)])  # (Q,)
        metrics = retrieval_metrics(scores, task.eval_gold)
        return {"eval_loss": float((every - right).mean()),
                "eval_accuracy": metrics.pop("recall@1"),
                **{f"eval_{k}": v for k, v in metrics.items()}}

    def report(self, result: dict) -> str:
        return (f"loss {result['eval_loss']:.3f}, recall@1 {result['eval_accuracy']:.3f}, "
                f"recall@5 {result['eval_recall@5']:.3f}, mrr {result['eval_mrr']:.3f}")

    def summary(self, model: ContrastiveModel) -> str:
        kind = "sentences with themselves (SimCSE)" if self.cfg.simcse else "query-passage pairs"
        learned = " (learned)" if self.cfg.learn_temperature else ""
        return (f"task {self.task.name}: {len(self.task.train)} training {kind}, "
                f"{len(self.task.eval_queries)} evaluation queries over "
                f"{len(self.task.eval_passages)} passages; model {self.cfg.model}, "
                f"{model.num_parameters() / 1e6:.2f}M parameters, temperature "
                f"{model.current_temperature():.3g}{learned}")

    def save(self, model: ContrastiveModel, folder: Path) -> None:
        """A sentence-transformers folder, and the temperature in ``contrastive.json``."""
        self.encoder_of(model).save_pretrained(folder)
        state = {"temperature": model.current_temperature(), "learned": model.learn_temperature}
        if model.learn_temperature:
            state["log_scale"] = float(raw(model.log_scale).reshape(-1)[0])  # exact in JSON
        atomic_write_json(Path(folder) / TEMPERATURE_FILE, state)

