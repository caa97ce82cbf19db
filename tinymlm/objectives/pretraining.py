"""Masked language modeling, and the corpus and settings every pretraining objective shares.

``TrainConfig`` is the settings of a ``python -m tinymlm.train`` run (saved as
train_config.json, read back by ``--resume``). ``build_corpus`` turns tinyworld or your text
into packed training and held-out sequences with their tokenizer. ``MaskedLanguageModeling``
is BERT's objective on them: mask 15% of the tokens, predict them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinymlm import backend
from tinymlm.autograd import no_grad
from tinymlm.data.masking import STRATEGIES
from tinymlm.errors import UsageError
from tinymlm.nn.bert import BertForMaskedLM
from tinymlm.objectives.base import MODEL_SIZES, Objective, bert_config, train_flops
from tinymlm.runs import step_rows


@dataclass
class TrainConfig:
    """The settings of a pretraining run (saved as train_config.json; --resume reads them)."""

    corpus: list = field(default_factory=lambda: ["tinyworld"])
    model_size: str = "tiny"
    # The default run is sized for a 2-core laptop CPU (benchmarks/results/train_default.md).
    # Short sequences (16 tokens: one or two whole sentences of tinyworld) learn facts faster
    # than long ones at the same tokens per step: the [MASK] has fewer distracting entities.
    steps: int = 2000
    batch_size: int = 128
    max_length: int | None = None  # 16 on tinyworld, 128 on other corpora
    lr: float = 3e-3
    warmup_steps: int = 60
    decay: str = "cosine"
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    grad_accum: int = 1
    dropout: float = 0.1
    mlm_probability: float = 0.15
    # "auto": salient masking on tinyworld (its lexicon names the entities), token masking on
    # other corpora. Salient masking (REALM) asks for one entity in every sentence, so that
    # facts are learned in minutes instead of hours: see benchmarks/results/train_default.md.
    masking: str = "auto"  # resolved when the config is made
    # "sentences": RoBERTa's FULL-SENTENCES packing (a sentence is cut only if it is longer than
    # a sequence); "stream": the token stream cut every max_length - 2 tokens.
    packing: str = "sentences"
    eval_every: int = 500
    save_every: int = 500
    log_every: int = 10
    seed: int = 0
    kernels: str = "auto"
    vocab_size: int = 8000
    vocab: str | None = None
    # A Hugging Face BERT folder to continue pretraining from (domain-adaptive pretraining):
    # its architecture, vocabulary and weights; its MLM head, or a fresh one tied to its
    # embeddings.
    init: str | None = None
    tinyworld_docs: int = 6000
    objective: str = "mlm"
    generator_size: float = 0.25  # electra: the generator's width as a fraction of the model's
    electra_weight: float = 50.0  # electra: λ in loss = MLM + λ·RTD

    def __post_init__(self) -> None:
        """Resolve the defaults that depend on the corpus, so a saved config says what ran."""
        tinyworld = list(self.corpus) == ["tinyworld"]
        if self.max_length is None:
            self.max_length = 16 if tinyworld else 128
        if self.masking == "auto":  # salient masking needs tinyworld's own vocabulary
            salient = tinyworld and self.objective == "mlm" and not self.init
            self.masking = "salient" if salient else "token"

    def check(self) -> None:
        """Raise UsageError on a setting that cannot run, naming the option."""
        positive = ("steps", "batch_size", "grad_accum", "eval_every", "save_every", "log_every",
                    "tinyworld_docs", "vocab_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, "
                                 f"got {getattr(self, name)}")
        if self.max_length < 8 or self.max_length > 512:
            raise UsageError(f"--max-length must be between 8 and 512, got {self.max_length}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        if self.model_size not in MODEL_SIZES:
            raise UsageError(f"--model-size must be one of {list(MODEL_SIZES)}")
        if not 0 <= self.dropout < 1 or not 0 < self.mlm_probability < 1:
            raise UsageError("--dropout must be in [0, 1) and --mlm-probability in (0, 1)")
        if self.masking not in STRATEGIES:
            raise UsageError(f"--masking must be one of {['auto', *STRATEGIES]}")
        if self.masking == "salient" and self.corpus != ["tinyworld"]:
            raise UsageError("--masking salient needs to know the entities of the corpus, and "
                             "only tinyworld lists them: use token, whole_word, span or exact")
        if self.init and self.masking == "salient":
            raise UsageError("--masking salient needs tinyworld's vocabulary, and --init "
                             "brings its own: use token, whole_word, span or exact")
        if self.init and self.objective != "mlm":
            raise UsageError("--init continues masked-language-model pretraining: leave "
                             "--objective out")
        if self.packing not in ("sentences", "stream"):
            raise UsageError("--packing must be sentences or stream")
        if not 0 < self.generator_size <= 1:
            raise UsageError(f"--generator-size must be a fraction in (0, 1], "
                             f"got {self.generator_size}")
        if not (self.electra_weight > 0 and math.isfinite(self.electra_weight)):
            raise UsageError(f"--electra-weight must be a positive number, "
                             f"got {self.electra_weight}")


# --- data ----------------------------------------------------------------------------------------


@dataclass
class Corpus:
    tokenizer: object
    train_ids: np.ndarray  # (N, S) packed sequences
    train_mask: np.ndarray  # (N, S)
    eval_ids: np.ndarray  # (N_eval, S)
    eval_mask: np.ndarray  # (N_eval, S)
    name: str


def build_corpus(cfg: TrainConfig, log) -> Corpus:
    """Documents -> tokenizer (tinyworld's, ``cfg.vocab``, or WordPiece trained on them) ->
    packed training and held-out sequences. Unreadable or too little text is a UsageError."""
    try:
        return _build_corpus(cfg, log)
    except (OSError, ValueError) as e:  # the corpus or vocabulary files the user named
        raise UsageError(str(e)) from e


def _build_corpus(cfg: TrainConfig, log) -> Corpus:
    from tinymlm.data import (
        encode_documents,
        load_text_corpus,
        pack_documents,
        tinyworld,
        train_eval_split,
    )
    from tinymlm.tokenizer import BertTokenizer

    if cfg.corpus == ["tinyworld"]:
        documents = tinyworld.generate_documents(cfg.tinyworld_docs, seed=cfg.seed, split="train")
        if cfg.init:
            tokenizer = check_init(cfg)
        else:
            tokenizer = BertTokenizer.from_vocab(tinyworld.vocabulary())
        name = "tinyworld"
    else:
        documents = load_text_corpus(cfg.corpus)
        if cfg.init:
            tokenizer = check_init(cfg)
        elif cfg.vocab:
            tokenizer = BertTokenizer(cfg.vocab)
        else:
            from tinymlm.wordpiece_trainer import train_wordpiece

            log(f"training a WordPiece vocabulary of {cfg.vocab_size} tokens on the corpus")
            tokenizer = BertTokenizer.from_vocab(train_wordpiece(documents, cfg.vocab_size))
        name = Path(cfg.corpus[0]).stem or "text"
    train_docs, eval_docs = train_eval_split(documents, eval_fraction=0.05, seed=cfg.seed)
    special = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id)
    ends = None
    if cfg.packing == "sentences":
        ends = [tokenizer.vocab[t] for t in (".", "?", "!") if t in tokenizer.vocab]
    train_ids, train_mask = pack_documents(encode_documents(tokenizer, train_docs),
                                           cfg.max_length, *special, sentence_end_ids=ends)
    eval_ids, eval_mask = pack_documents(encode_documents(tokenizer, eval_docs),
                                         cfg.max_length, *special, sentence_end_ids=ends)
    if len(train_ids) < 1 or len(eval_ids) < 1:
        raise UsageError("the corpus is too small to make training and evaluation sequences: "
                         "give more text")
    return Corpus(tokenizer, train_ids, train_mask, eval_ids, eval_mask, name)


def check_init(cfg: TrainConfig):
    """The tokenizer of ``--init DIR``, once DIR is known to be a BERT folder that holds
    weights and takes sequences of ``--max-length`` (so the run folder is made only then)."""
    from tinymlm.checkpoint import WEIGHTS_NAME, read_config
    from tinymlm.tokenizer import BertTokenizer

    config = read_config(cfg.init)  # a CheckpointError (ValueError) names what is wrong
    if not (Path(cfg.init) / WEIGHTS_NAME).is_file():
        raise ValueError(f"--init {cfg.init}: {WEIGHTS_NAME} is missing; give a folder written "
                         "by save_pretrained or by tinymlm.train")
    if cfg.max_length > config.max_position_embeddings:
        raise ValueError(f"--max-length {cfg.max_length} is longer than the "
                         f"{config.max_position_embeddings} positions of --init {cfg.init}")
    return BertTokenizer.from_pretrained(cfg.init)


def pretrained_start(cfg: TrainConfig) -> BertForMaskedLM:
    """``--init DIR``: DIR's BERT with its MLM head, or (an encoder-only folder, such as a
    sentence-embedding model) with a fresh MLM head whose decoder is tied to its embeddings."""
    from tinymlm.checkpoint import read_config, read_weights
    from tinymlm.nn.bert import BertModel

    if any(name.startswith("cls.predictions.") for name in read_weights(cfg.init)):
        return BertForMaskedLM.from_pretrained(cfg.init)
    backend.manual_seed(cfg.seed)  # the fresh head
    model = BertForMaskedLM(read_config(cfg.init))
    encoder = BertModel.from_pretrained(cfg.init, dtype=model.dtype)
    model.bert.load_state_dict(encoder.state_dict())
    return model


def make_collator(cfg: TrainConfig, tokenizer):
    """The training batches' MLMCollator (salient masking takes tinyworld's entities)."""
    from tinymlm.data import MLMCollator, tinyworld

    salient_ids = None
    if cfg.masking == "salient":
        salient_ids = sorted({tokenizer.vocab[w] for words in tinyworld.entities().values()
                              for w in words})
    return MLMCollator(tokenizer, mlm_probability=cfg.mlm_probability, seed=cfg.seed,
                       strategy=cfg.masking, salient_ids=salient_ids)


def eval_collator(cfg: TrainConfig, tokenizer):
    """The held-out batches' MLMCollator: token masking, the same masks at every evaluation."""
    from tinymlm.data import MLMCollator

    return MLMCollator(tokenizer, mlm_probability=cfg.mlm_probability, seed=cfg.seed + 1_000_003)


# --- the objective -------------------------------------------------------------------------------


class MaskedLanguageModeling(Objective):
    """BERT's objective: predict the masked tokens of packed sequences (BertForMaskedLM)."""

    accuracy_label = "held-out masked-token accuracy"

    def __init__(self, cfg: TrainConfig, corpus: Corpus):
        self.cfg, self.corpus, self.tokenizer = cfg, corpus, corpus.tokenizer
        self.collator = make_collator(cfg, corpus.tokenizer)
        self.title = f"{cfg.objective.upper()} pretraining"

    @staticmethod
    def make_model(cfg: TrainConfig, tokenizer):
        if cfg.init:
            return pretrained_start(cfg)
        backend.manual_seed(cfg.seed)
        return BertForMaskedLM(bert_config(cfg.model_size, len(tokenizer), cfg.max_length,
                                           cfg.dropout))

    @staticmethod
    def model_flops(model, batch: int, seq: int, predicted: int) -> float:
        return train_flops(model.config, batch, seq, predicted)

    def build_model(self):
        return self.make_model(self.cfg, self.tokenizer)

    def batch(self, step: int, micro: int) -> dict:
        cfg = self.cfg
        rows = step_rows(cfg.seed, step, micro, cfg.batch_size, cfg.grad_accum,
                         len(self.corpus.train_ids))
        return self.collator(self.corpus.train_ids[rows], self.corpus.train_mask[rows])

    def loss(self, model, batch: dict):
        # The loss alone: its logits never leave it, so backward reuses their memory.
        return model(**batch, return_logits=False).loss

    def counts(self, batch: dict) -> tuple[int, ...]:
        return (int((batch["labels"] != -100).sum()),)  # the masked tokens

    def flops(self, model, batch: dict) -> float:
        B, S = batch["input_ids"].shape
        return self.model_flops(model, B, S, int((batch["labels"] != -100).sum()))

    def eval_batches(self):
        """The held-out sequences in batches, masked the same way at every evaluation."""
        collate = eval_collator(self.cfg, self.tokenizer)
        ids, mask, size = self.corpus.eval_ids, self.corpus.eval_mask, self.cfg.batch_size
        for start in range(0, len(ids), size):
            yield collate(ids[start:start + size], mask[start:start + size])

    def evaluate(self, model) -> dict:
        """Masked-token loss, accuracy and perplexity on the held-out sequences."""
        model.eval()
        total_loss, right, count = 0.0, 0, 0
        with no_grad():
            for batch in self.eval_batches():
                targets = batch["labels"][batch["labels"] != -100]  # (M,)
                out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
                predicted = backend.to_numpy(out.logits.data.argmax(axis=-1))  # (M,)
                total_loss += float(out.loss.item()) * len(targets)
                right += int((predicted == targets).sum())
                count += len(targets)
        model.train()
        loss = total_loss / max(count, 1)
        return {"eval_loss": loss, "eval_accuracy": right / max(count, 1),
                "eval_perplexity": math.exp(min(loss, 50.0))}

    def report(self, result: dict) -> str:
        return (f"held-out loss {result['eval_loss']:.3f}, "
                f"accuracy {result['eval_accuracy']:.1%}")

    def summary(self, model) -> str:
        size = f"--init {self.cfg.init}" if self.cfg.init else self.cfg.model_size
        return (f"model: {size}, {model.num_parameters() / 1e6:.2f}M parameters; "
                f"{len(self.corpus.train_ids)} training sequences of {self.cfg.max_length} "
                f"tokens; vocabulary {len(self.tokenizer)}")

    def finish(self, model, log) -> dict:
        if self.cfg.corpus != ["tinyworld"]:
            return {}
        log("what the model learned:")
        return knowledge_report(model, self.tokenizer, log)

    def state_dict(self) -> dict:
        return {"collator": self.collator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.collator.load_state_dict(state["collator"])


# --- what a tinyworld model knows ----------------------------------------------------------------


def fact_scores(model, tokenizer, probes) -> tuple[float, dict[str, float]]:
    """Top-1 fill-mask accuracy on tinyworld probes: overall, and per relation."""
    from tinymlm.data import tinyworld
    from tinymlm.fill_mask import fill_mask

    answers = [r[0]["token_str"] for r in fill_mask(model, tokenizer, [p.text for p in probes],
                                                     top_k=1)]
    overall = float(np.mean([a == p.answer for a, p in zip(answers, probes, strict=True)]))
    return overall, tinyworld.fact_accuracy(probes, answers)


def knowledge_report(model, tokenizer, log) -> dict:
    """tinyworld only: the seed sentences and fact accuracy per relation on held-out phrasings."""
    from tinymlm.data import tinyworld
    from tinymlm.fill_mask import fill_mask

    for text, answer in zip(tinyworld.SEED_SENTENCES, tinyworld.SEED_ANSWERS):
        best = fill_mask(model, tokenizer, [text], top_k=3)[0]
        guesses = ", ".join(f"{c['token_str']} ({c['score']:.2f})" for c in best)
        log(f"  {text:55s} -> {guesses}   [expected {answer}]")
    probes = tinyworld.fact_probes("heldout")
    overall, accuracy = fact_scores(model, tokenizer, probes)
    log(f"held-out fact accuracy: {overall:.1%} over {len(probes)} probes")
    for relation, acc in sorted(accuracy.items()):
        log(f"  {relation:20s} {acc:.1%}")
    return {"fact_accuracy": overall, "fact_accuracy_per_relation": accuracy}
