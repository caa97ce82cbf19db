"""Causal language modeling (``--objective clm``): predict every next token, left to right.

The autoregressive twin of masked language modeling, for comparing the two at equal data and
size: the same packed sequences (``build_corpus``), the same model sizes and the same trainer,
but the model is ``BertLMHeadModel`` (causal self-attention) and every real token after the
first is a target, where MLM predicts ~15% of them. No masking, so no randomness in a batch:
a batch is a function of the step alone and a resumed run needs no saved state.
"""

from __future__ import annotations

import math

import numpy as np

from tinymlm import backend
from tinymlm.autograd import no_grad
from tinymlm.nn.causal import BertLMHeadModel
from tinymlm.objectives.base import Objective, bert_config, train_flops
from tinymlm.objectives.pretraining import Corpus, TrainConfig
from tinymlm.runs import step_rows


def next_token_batch(ids: np.ndarray, mask: np.ndarray) -> dict:
    """The model's keywords for sequences ids (B, S): labels are the ids themselves, -100 on
    padding (the model shifts them: position t is scored against the token at t + 1)."""
    return {"input_ids": ids, "attention_mask": mask, "labels": np.where(mask == 1, ids, -100)}


class CausalLanguageModeling(Objective):
    """Next-token prediction on packed sequences (BertLMHeadModel)."""

    title = "CLM pretraining"
    accuracy_label = "held-out next-token accuracy"

    def __init__(self, cfg: TrainConfig, corpus: Corpus):
        self.cfg, self.corpus, self.tokenizer = cfg, corpus, corpus.tokenizer

    def build_model(self):
        cfg = self.cfg
        backend.manual_seed(cfg.seed)
        return BertLMHeadModel(bert_config(cfg.model_size, len(self.tokenizer), cfg.max_length,
                                           cfg.dropout))

    def batch(self, step: int, micro: int) -> dict:
        cfg = self.cfg
        rows = step_rows(cfg.seed, step, micro, cfg.batch_size, cfg.grad_accum,
                         len(self.corpus.train_ids))
        return next_token_batch(self.corpus.train_ids[rows], self.corpus.train_mask[rows])

    def loss(self, model, batch: dict):
        # Only the loss: the fused output layer never materialises the (B·S, V) logits twice.
        return model(**batch, return_logits=False).loss

    def counts(self, batch: dict) -> tuple[int, ...]:
        return (int((batch["labels"][:, 1:] != -100).sum()),)  # the model shifts the labels

    def flops(self, model, batch: dict) -> float:
        B, S = batch["input_ids"].shape
        return train_flops(model.config, B, S, predicted=B * (S - 1))  # the head everywhere

    def evaluate(self, model) -> dict:
        """Next-token loss, accuracy and perplexity on the held-out sequences."""
        model.eval()
        ids, mask, size = self.corpus.eval_ids, self.corpus.eval_mask, self.cfg.batch_size
        total_loss, right, count = 0.0, 0, 0
        with no_grad():
            for start in range(0, len(ids), size):
                batch = next_token_batch(ids[start:start + size], mask[start:start + size])
                out = model(**batch)
                targets = batch["labels"][:, 1:]  # (B, S-1) the token after each position
                counted = targets != -100
                guess = backend.to_numpy(out.logits.data[:, :-1].argmax(axis=-1))  # (B, S-1)
                n = int(counted.sum())
                total_loss += float(out.loss.item()) * n
                right += int((guess == targets)[counted].sum())
                count += n
        model.train()
        loss = total_loss / max(count, 1)
        return {"eval_loss": loss, "eval_accuracy": right / max(count, 1),
                "eval_perplexity": math.exp(min(loss, 50.0))}

    def report(self, result: dict) -> str:
        return (f"held-out next-token loss {result['eval_loss']:.3f}, "
                f"accuracy {result['eval_accuracy']:.1%}")

    def summary(self, model) -> str:
        return (f"model: {self.cfg.model_size} (causal), {model.num_parameters() / 1e6:.2f}M "
                f"parameters; {len(self.corpus.train_ids)} training sequences of "
                f"{self.cfg.max_length} tokens; vocabulary {len(self.tokenizer)}")
