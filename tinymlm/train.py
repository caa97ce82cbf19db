"""Pretrain a small BERT with masked language modeling: ``python -m tinymlm.train``.

With no options it trains on tinyworld, the built-in corpus of facts, on the CPU in a few
minutes, then shows what the model learned ("Paris is the capital of [MASK]." -> france) and
its fact accuracy on phrasings it never read. ``--corpus PATH ...`` trains on your own text.

The run folder (printed at the start) is a Hugging Face model folder at its top level
(config.json, model.safetensors, vocab.txt, tokenizer_config.json) plus train_config.json,
metrics.jsonl, loss_curve.png and the trainer state. Checkpoints are written whole into
``checkpoints/step-N/`` and published by atomically replacing the ``current`` link that the
top-level files point through, so a reader (or a crash) never mixes two steps.

Reproducible: every random choice is seeded from ``--seed`` and the step number, so
``--stop-after K`` followed by ``--resume DIR`` ends with the same bytes as one run.

``--objective electra`` pretrains ELECTRA instead (``tinymlm/electra.py``): a generator of
``--generator-size`` times the width fills in the masked tokens and the model that is trained
and saved at the top of the run folder is the discriminator, a BERT encoder to fine-tune. The
generator and the discriminator's head are kept beside it in ``electra.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tinymlm import backend, kernels
from tinymlm.autograd import no_grad
from tinymlm.checkpoint import CheckpointError
from tinymlm.data.masking import STRATEGIES
from tinymlm.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from tinymlm.nn.bert import BertConfig, BertForMaskedLM
from tinymlm.optim import AdamW, clip_grad_norm_, lr_at, param_groups
from tinymlm.runs import epoch_rows, plot_curves, publish_checkpoint

MODEL_SIZES = {  # name: (layers, hidden); heads = hidden / 64, intermediate = 4 · hidden
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
}
OBJECTIVES = ("mlm", "electra")


class UsageError(Exception):
    """Bad input from the user: reported in one line with exit status 2."""


@dataclass
class TrainConfig:
    """The settings of a run (saved as train_config.json; --resume reads them back)."""

    corpus: list = field(default_factory=lambda: ["tinyworld"])
    model_size: str = "tiny"
    # The default run is sized for a 2-core laptop CPU: about 4 minutes, see
    # benchmarks/results/train_default.md. Short sequences (16 tokens: one or two whole
    # sentences of tinyworld) learned facts several times faster than 32 at the same tokens
    # per step, because the [MASK] has fewer distracting entities to look at.
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
    tinyworld_docs: int = 6000
    objective: str = "mlm"
    generator_size: float = 0.25  # electra: the generator's width as a fraction of the model's
    electra_weight: float = 50.0  # electra: λ in loss = MLM + λ·RTD

    def __post_init__(self) -> None:
        """Resolve the defaults that depend on the corpus, so a saved config says what ran."""
        tinyworld = list(self.corpus) == ["tinyworld"]
        if self.max_length is None:
            self.max_length = 16 if tinyworld else 128
        if self.masking == "auto":
            self.masking = "salient" if tinyworld and self.objective == "mlm" else "token"

    def check(self) -> None:
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
        if self.packing not in ("sentences", "stream"):
            raise UsageError("--packing must be sentences or stream")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"--objective must be one of {list(OBJECTIVES)}")
        if not 0 < self.generator_size <= 1:
            raise UsageError(f"--generator-size must be a fraction in (0, 1], "
                             f"got {self.generator_size}")
        if not (self.electra_weight > 0 and math.isfinite(self.electra_weight)):
            raise UsageError(f"--electra-weight must be a positive number, "
                             f"got {self.electra_weight}")


# --- data -----------------------------------------------------------------------------------------


@dataclass
class Corpus:
    tokenizer: object
    train_ids: np.ndarray  # (N, S) packed sequences
    train_mask: np.ndarray  # (N, S)
    eval_ids: np.ndarray
    eval_mask: np.ndarray
    name: str


def build_corpus(cfg: TrainConfig, log) -> Corpus:
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
        tokenizer = BertTokenizer.from_vocab(tinyworld.vocabulary())
        name = "tinyworld"
    else:
        documents = load_text_corpus(cfg.corpus)
        if cfg.vocab:
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


def make_collator(cfg: TrainConfig, tokenizer):
    """The training batches' MLMCollator (salient masking takes tinyworld's entities)."""
    from tinymlm.data import MLMCollator, tinyworld

    salient_ids = None
    if cfg.masking == "salient":
        salient_ids = sorted({tokenizer.vocab[w] for words in tinyworld.entities().values()
                              for w in words})
    return MLMCollator(tokenizer, mlm_probability=cfg.mlm_probability, seed=cfg.seed,
                       strategy=cfg.masking, salient_ids=salient_ids)


def batch_rows(step: int, micro: int, cfg: TrainConfig, n_rows: int) -> np.ndarray:
    """Rows of micro-batch ``micro`` of optimizer step ``step`` (1-based)."""
    start = ((step - 1) * cfg.grad_accum + micro) * cfg.batch_size
    return epoch_rows(cfg.seed, start, cfg.batch_size, n_rows)


def training_step(step: int, model, optimizer, collator, corpus: Corpus, cfg: TrainConfig):
    """Optimizer step ``step`` (1-based): ``grad_accum`` micro-batches, clipping, schedule.

    Everything random in it is a function of the step (batch rows, dropout seed) or of the
    collator's saved state, which is what makes a resumed run equal an uninterrupted one.
    Returns the summed micro-batch losses (a 0-d array on the model's device: reading it on
    the GPU is a sync), the gradient norm, and the predicted positions of each micro-batch.
    """
    backend.manual_seed(cfg.seed * 1_000_003 + step)  # dropout: a function of the step
    loss_sum, predicted = None, []
    for micro in range(cfg.grad_accum):
        rows = batch_rows(step, micro, cfg, len(corpus.train_ids))
        batch = collator(corpus.train_ids[rows], corpus.train_mask[rows])
        out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        (out.loss * (1.0 / cfg.grad_accum)).backward()
        loss_sum = out.loss.data if loss_sum is None else loss_sum + out.loss.data
        predicted.append(int((batch["labels"] != -100).sum()))
    grad_norm = clip_grad_norm_(model.parameters(), cfg.clip_norm)
    optimizer.set_lr(lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.decay))
    optimizer.step()
    optimizer.zero_grad()
    return loss_sum, grad_norm, predicted


# --- the model and its cost -----------------------------------------------------------------------


def make_model(cfg: TrainConfig, vocab_size: int, special_ids=()):
    """BertForMaskedLM, or for electra the ElectraForPretraining whose discriminator has the
    chosen size (``special_ids``: tokens its generator must never sample)."""
    layers, hidden = MODEL_SIZES[cfg.model_size]
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
        max_position_embeddings=max(512, cfg.max_length), hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
    )
    backend.manual_seed(cfg.seed)
    if cfg.objective == "electra":
        from tinymlm.electra import ElectraForPretraining, generator_config

        return ElectraForPretraining(config, generator_config(config, cfg.generator_size),
                                     special_ids, rtd_weight=cfg.electra_weight)
    return BertForMaskedLM(config)


def train_flops(config: BertConfig, batch: int, seq: int, predicted: int) -> float:
    """Floating-point operations of one forward + backward (≈ 3 × forward)."""
    H, I, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, \
        config.vocab_size
    per_token = L * (2 * 4 * H * H + 2 * 2 * H * I + 2 * 2 * seq * H)  # projections, FFN, attention
    head = predicted * 2 * (H * H + H * V)
    return 3.0 * (batch * seq * per_token + head)


def model_flops(model, batch: int, seq: int, predicted: int) -> float:
    """train_flops of the model; for ELECTRA, its discriminator (no MLM head) plus generator."""
    if hasattr(model, "generator"):
        return (train_flops(model.config, batch, seq, 0)
                + train_flops(model.generator.config, batch, seq, predicted))
    return train_flops(model.config, batch, seq, predicted)


# --- evaluation -----------------------------------------------------------------------------------


def evaluate(model, corpus: Corpus, cfg: TrainConfig, device: str) -> dict:
    """Masked-token loss, accuracy and perplexity on the held-out sequences (fixed masks).

    ELECTRA: those of its generator, plus the discriminator's replaced-token-detection loss
    and accuracy (fixed masks and samples)."""
    from tinymlm.data import MLMCollator

    collate = MLMCollator(corpus.tokenizer, mlm_probability=cfg.mlm_probability,
                          seed=cfg.seed + 1_000_003)
    electra = cfg.objective == "electra"
    if electra:
        from tinymlm.electra import sampling_generator

        samples = sampling_generator(device, cfg.seed + 2_000_003)
    model.eval()
    total_loss, right, count = 0.0, 0, 0
    rtd_loss, rtd_right, tokens = 0.0, 0.0, 0
    rtd_scores, rtd_replaced = [], []
    with no_grad():
        for start in range(0, len(corpus.eval_ids), cfg.batch_size):
            batch = collate(corpus.eval_ids[start:start + cfg.batch_size],
                            corpus.eval_mask[start:start + cfg.batch_size])
            targets = batch["labels"][batch["labels"] != -100]
            if electra:
                out = model(batch["input_ids"], batch["attention_mask"], batch["labels"],
                            generator=samples)
                loss, logits = out.mlm_loss, out.generator_logits
                real = int(batch["attention_mask"].sum())
                rtd_loss += float(out.rtd_loss.item()) * real
                rtd_right += float(out.rtd_accuracy) * real
                labels = backend.to_numpy(out.rtd_labels)  # (B, S) 1 replaced, 0 not, -100 pad
                rtd_scores.append(backend.to_numpy(out.discriminator_logits.data)[labels != -100])
                rtd_replaced.append(labels[labels != -100] == 1)
                tokens += real
            else:
                out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
                loss, logits = out.loss, out.logits
            predicted = backend.to_numpy(logits.data.argmax(axis=-1))
            total_loss += float(loss.item()) * len(targets)
            right += int((predicted == targets).sum())
            count += len(targets)
    model.train()
    loss = total_loss / max(count, 1)
    result = {"eval_loss": loss, "eval_accuracy": right / max(count, 1),
              "eval_perplexity": math.exp(min(loss, 50.0))}
    if electra:
        from tinymlm.electra import replaced_token_auc

        replaced = np.concatenate(rtd_replaced)
        result.update(eval_rtd_loss=rtd_loss / max(tokens, 1),
                      eval_rtd_accuracy=rtd_right / max(tokens, 1),
                      # what "original" everywhere would score, and the threshold-free measure
                      eval_rtd_original_share=float(1.0 - replaced.mean()),
                      eval_rtd_auc=replaced_token_auc(np.concatenate(rtd_scores), replaced))
    return result


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


def log_attention_choices(write) -> None:
    """On the GPU with kernels="auto": which attention path the first step measured faster."""
    from tinymlm.kernels.attention import measured_choices

    for (_, _, seq, _, _), choice in measured_choices.items():
        path = "the fused kernel" if choice["fused"] else "the reference path"
        write(f"attention at S={seq}: {path} (measured fused {choice['fused_ms']:.2f} ms, "
              f"reference {choice['reference_ms']:.2f} ms)")


# --- the run folder -------------------------------------------------------------------------------


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer, collator) -> None:
    """Model, tokenizer, optimizer and masking state of ``step``, published as one checkpoint."""
    from safetensors.numpy import save

    def write(step_dir: Path) -> None:
        model.save_pretrained(step_dir)
        tokenizer.save_pretrained(step_dir)
        opt_state = optimizer.state_dict()
        atomic_write_bytes(step_dir / "optimizer.safetensors",
                           save(opt_state["arrays"], metadata={"step": str(step)}))
        atomic_write_json(step_dir / "trainer_state.json", {
            "step": step, "optimizer_step": opt_state["step"],
            "optimizer_hyper": opt_state["hyper"], "collator": collator.state_dict(),
        })

    publish_checkpoint(run_dir, step, write)


def load_checkpoint(run_dir: Path, model, optimizer, collator) -> int:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    current = run_dir / "current"
    try:
        state = json.loads((current / "trainer_state.json").read_text())
        loaded = type(model).from_pretrained(current, dtype=model.dtype)
        arrays = load_file(current / "optimizer.safetensors")
    except (OSError, ValueError, SafetensorError) as e:
        raise UsageError(f"the checkpoint in {run_dir} is missing or damaged ({e}); start a new "
                         "run or restore the folder") from e
    model.load_state_dict(loaded.state_dict())
    optimizer.load_state_dict({"step": state["optimizer_step"], "hyper": state["optimizer_hyper"],
                               "arrays": arrays})
    collator.load_state_dict(state["collator"])
    return int(state["step"])


# --- the loop -------------------------------------------------------------------------------------


def train(cfg: TrainConfig, run_dir: Path, device: str = "cpu", resume: bool = False,
          stop_after: int | None = None, log=print) -> dict:
    """Train (or continue) the run in ``run_dir``; returns the final metrics."""
    from tqdm import tqdm

    kernels.set_kernels(cfg.kernels)
    corpus = build_corpus(cfg, log)
    model = make_model(cfg, len(corpus.tokenizer), corpus.tokenizer.all_special_ids)
    optimizer = AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98),
                      eps=1e-6)
    collator = make_collator(cfg, corpus.tokenizer)
    metrics_file = run_dir / "metrics.jsonl"
    start = 0
    rows: list[dict] = []
    if resume:
        start = load_checkpoint(run_dir, model, optimizer, collator)
        if metrics_file.exists():  # forget what was logged after the checkpoint
            rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line]
            rows = [r for r in rows if r["step"] <= start]
        log(f"resuming at step {start} of {cfg.steps}")
    model.to(device)
    optimizer.load_state_dict(optimizer.state_dict())  # moves the optimizer state with the model
    model.train()
    log(f"model: {cfg.model_size}, {model.num_parameters() / 1e6:.2f}M parameters; "
        f"{len(corpus.train_ids)} training sequences of {cfg.max_length} tokens; "
        f"vocabulary {len(corpus.tokenizer)}")

    def write_metrics():
        atomic_write_text(metrics_file, "".join(json.dumps(r) + "\n" for r in rows))

    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.max_length
    last = stop_after if stop_after is not None else cfg.steps
    window_loss, window_steps, window_flops, window_start = 0.0, 0, 0.0, time.perf_counter()
    # Progress (loss, tokens/s, GFLOP/s, ETA) on stderr; into a log file, every 15 s.
    bar = tqdm(total=cfg.steps, initial=start, desc="training", unit="step", file=sys.stderr,
               dynamic_ncols=True, mininterval=0.2 if sys.stderr.isatty() else 15.0)
    step = completed = start
    try:
        for step in range(start + 1, min(last, cfg.steps) + 1):
            loss_sum, grad_norm, predicted = training_step(step, model, optimizer, collator,
                                                           corpus, cfg)
            window_flops += sum(model_flops(model, cfg.batch_size, cfg.max_length, n)
                                for n in predicted)
            completed = step
            window_steps += 1
            if step == start + 1 and device == "cuda":
                log_attention_choices(lambda message: bar.write(message, file=sys.stderr))
            if device == "cpu" or step % cfg.log_every == 0:
                loss_value = float(loss_sum) / cfg.grad_accum  # on the GPU: a sync, so not always
                if not math.isfinite(loss_value):
                    raise FloatingPointError(
                        f"the loss became {loss_value} at step {step}; the last good checkpoint "
                        f"is kept in {run_dir}. Lower --lr or raise --warmup-steps and rerun"
                    )
                window_loss += loss_value
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - window_start
                logged = window_steps if device == "cpu" else 1
                row = {"step": step, "loss": window_loss / max(logged, 1),
                       "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                       "tokens_per_s": window_steps * tokens_per_step / elapsed,
                       "gflops_per_s": window_flops / elapsed / 1e9}
                rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}",
                                gflops=f"{row['gflops_per_s']:.1f}")
                window_loss, window_steps, window_flops = 0.0, 0, 0.0
                window_start = time.perf_counter()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                result = evaluate(model, corpus, cfg, device)
                rows.append({"step": step, **result})
                rtd = (f", replaced-token detection {result['eval_rtd_accuracy']:.1%} "
                       f"(all-original {result['eval_rtd_original_share']:.1%}), "
                       f"AUC {result['eval_rtd_auc']:.3f}" if "eval_rtd_auc" in result else "")
                bar.write(f"step {step}: held-out loss {result['eval_loss']:.3f}, accuracy "
                          f"{result['eval_accuracy']:.1%}{rtd}", file=sys.stderr)
            if step % cfg.save_every == 0 or step == cfg.steps or step == stop_after:
                save_checkpoint(run_dir, step, model, corpus.tokenizer, optimizer, collator)
                write_metrics()
                plot_curves(run_dir, rows, f"{cfg.objective.upper()} pretraining: {run_dir.name}",
                            "held-out masked-token accuracy")
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        if completed > start:
            save_checkpoint(run_dir, completed, model, corpus.tokenizer, optimizer, collator)
            rows = [r for r in rows if r["step"] <= completed]
            write_metrics()
        log(f"interrupted: saved step {completed} in {run_dir}; continue with "
            f"python -m tinymlm.train --resume {run_dir}")
        raise SystemExit(130) from None
    bar.close()
    final = {"step": step}
    if step == cfg.steps and cfg.corpus == ["tinyworld"] and cfg.objective == "mlm":
        log("what the model learned:")
        final.update(knowledge_report(model, corpus.tokenizer, log))
        rows.append(final)
        write_metrics()
    elif stop_after is not None and step < cfg.steps:
        log(f"stopped after step {step}; continue with python -m tinymlm.train --resume {run_dir}")
    return final


# --- the command line -----------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tinymlm.train", description=__doc__.split("\n")[0])
    d = TrainConfig()
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--corpus", nargs="+", default=None,
                   help="tinyworld (default) or UTF-8 text files / folders")
    p.add_argument("--model-size", choices=list(MODEL_SIZES), default=None)
    for name, kind in [("steps", int), ("batch-size", int), ("max-length", int), ("lr", float),
                       ("grad-accum", int), ("eval-every", int), ("save-every", int),
                       ("log-every", int), ("seed", int), ("warmup-steps", int),
                       ("weight-decay", float), ("clip-norm", float), ("dropout", float),
                       ("mlm-probability", float), ("vocab-size", int), ("tinyworld-docs", int)]:
        default = getattr(d, name.replace("-", "_"))
        if name == "max-length":
            default = "16 on tinyworld, 128 on other corpora"
        p.add_argument(f"--{name}", type=kind, default=None, help=f"default {default}")
    p.add_argument("--objective", choices=list(OBJECTIVES), default=None,
                   help="mlm (default) or electra (generator + replaced-token detection)")
    p.add_argument("--generator-size", type=float, default=None,
                   help=f"electra: generator width / model width, default {d.generator_size}")
    p.add_argument("--electra-weight", type=float, default=None,
                   help=f"electra: λ in loss = MLM + λ·RTD, default {d.electra_weight}")
    p.add_argument("--decay", choices=["linear", "cosine", "constant"], default=None)
    p.add_argument("--masking", choices=["auto", *STRATEGIES], default=None,
                   help="auto (default): salient for MLM on tinyworld, token otherwise")
    p.add_argument("--packing", choices=["sentences", "stream"], default=None,
                   help="sentences (default): whole sentences per sequence; stream: cut anywhere")
    p.add_argument("--kernels", choices=list(kernels.MODES), default=None)
    p.add_argument("--vocab", default=None, help="a vocab.txt to use instead of training one")
    p.add_argument("--out", default=None,
                   help="the run folder (default runs/<corpus>-<size>-<time>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run saved in DIR")
    p.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="save after step K and exit (as an interruption would)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        device = backend.normalize_device(args.device)
        if device == "cuda" and not backend.cuda_available():
            raise UsageError("--device cuda: no usable CUDA GPU with CuPy here; "
                             f"{backend.CUPY_INSTALL_HINT}")
        settings = {k: v for k, v in vars(args).items()
                    if k not in ("device", "out", "resume", "stop_after") and v is not None}
        if args.stop_after is not None and args.stop_after < 1:
            raise UsageError(f"--stop-after must be a positive step number, got {args.stop_after}")
        if args.resume:
            run_dir = Path(args.resume)
            if settings or args.out:
                raise UsageError("--resume continues a run with its saved settings: only "
                                 "--stop-after and --device may be given beside it")
            config_file = run_dir / "train_config.json"
            if not config_file.is_file():
                raise UsageError(f"{run_dir} is not a tinymlm run folder (no train_config.json)")
            cfg = TrainConfig(**json.loads(config_file.read_text()))
        else:
            cfg = TrainConfig(**{k.replace("-", "_"): v for k, v in settings.items()})
            cfg.check()
            electra_only = [k for k in ("generator_size", "electra_weight") if k in settings]
            if electra_only and cfg.objective != "electra":
                raise UsageError(f"--{electra_only[0].replace('_', '-')} is a setting of "
                                 "--objective electra only")
            if cfg.corpus != ["tinyworld"]:
                missing = [c for c in cfg.corpus if not Path(c).exists()]
                if missing:
                    raise UsageError(f"corpus not found: {missing[0]}; give text files or "
                                     "folders, or leave --corpus out to use tinyworld")
            name = "tinyworld" if cfg.corpus == ["tinyworld"] else Path(cfg.corpus[0]).stem
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(args.out or f"runs/{name}-{cfg.model_size}-{stamp}")
            if run_dir.exists() and any(run_dir.iterdir()):
                raise UsageError(f"run folder {run_dir} already exists: use --resume {run_dir} "
                                 "to continue it, or choose another --out")
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / "train_config.json", asdict(cfg))
        log(f"run folder: {run_dir}")
        start = time.perf_counter()
        train(cfg, run_dir, device=device, resume=bool(args.resume), stop_after=args.stop_after,
              log=log)
        if cfg.objective == "electra":
            log(f"done in {time.perf_counter() - start:.0f} s; {run_dir} holds the discriminator, "
                "a BERT encoder: BertModel.from_pretrained(run_dir), then fine-tune it")
        else:
            log(f"done in {time.perf_counter() - start:.0f} s; try: python -m tinymlm.fill_mask "
                f"--model {run_dir} \"Paris is the capital of [MASK].\"")
        return 0
    except (UsageError, CheckpointError, FileNotFoundError, ValueError, FloatingPointError,
            RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
