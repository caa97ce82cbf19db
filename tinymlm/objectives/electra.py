"""ELECTRA pretraining (``--objective electra``): a small generator fills in the masked
tokens and the discriminator, the encoder that is kept, spots which tokens were replaced.

The data and the masking are masked language modeling's; the model is
``tinymlm.nn.electra.ElectraForPretraining``, whose discriminator (a BERT encoder) is saved at
the top of the run folder, with the generator and the discriminator's head beside it in
``electra.safetensors``.
"""

from __future__ import annotations

import math

import numpy as np

from tinymlm import backend
from tinymlm.autograd import no_grad
from tinymlm.metrics import replaced_token_auc
from tinymlm.nn.electra import ElectraForPretraining, generator_config
from tinymlm.objectives.base import bert_config, train_flops
from tinymlm.objectives.pretraining import MaskedLanguageModeling, TrainConfig


def sampling_generator(device: str, seed: int):
    """A fresh seeded generator on ``device`` for the generator's samples."""
    if backend.normalize_device(device) == "cuda":
        return backend.cupy_module().random.default_rng(seed)
    return np.random.default_rng(seed)


class ElectraPretraining(MaskedLanguageModeling):
    """Generator MLM + λ · replaced-token detection (Clark et al., 2020)."""

    @staticmethod
    def make_model(cfg: TrainConfig, tokenizer):
        config = bert_config(cfg.model_size, len(tokenizer), cfg.max_length, cfg.dropout)
        backend.manual_seed(cfg.seed)
        return ElectraForPretraining(config, generator_config(config, cfg.generator_size),
                                     tokenizer.all_special_ids, rtd_weight=cfg.electra_weight)

    @staticmethod
    def model_flops(model, batch: int, seq: int, predicted: int) -> float:
        """The discriminator (no MLM head) plus the generator (the MLM head's positions)."""
        return (train_flops(model.config, batch, seq, 0)
                + train_flops(model.generator.config, batch, seq, predicted))

    def loss(self, model, batch: dict):
        return model(**batch).loss  # MLM's return_logits=False is not ElectraForPretraining's

    def counts(self, batch: dict) -> tuple[int, ...]:
        # the generator's MLM is over the masked tokens, replaced-token detection over the real
        return int((batch["labels"] != -100).sum()), int((batch["attention_mask"] != 0).sum())

    def loss_terms(self, model, batch: dict) -> tuple:
        out = model(**batch)
        return out.mlm_loss, out.rtd_loss * model.rtd_weight  # their sum is out.loss

    def evaluate(self, model) -> dict:
        """The generator's masked-token loss, accuracy and perplexity, and the discriminator's
        replaced-token-detection loss, accuracy and AUC (fixed masks and fixed samples)."""
        samples = sampling_generator(model.device, self.cfg.seed + 2_000_003)
        model.eval()
        total_loss, right, count = 0.0, 0, 0
        rtd_loss, rtd_right, tokens = 0.0, 0.0, 0
        rtd_scores, rtd_replaced = [], []
        with no_grad():
            for batch in self.eval_batches():
                targets = batch["labels"][batch["labels"] != -100]  # (M,)
                out = model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"],
                            generator=samples)
                predicted = backend.to_numpy(out.generator_logits.data.argmax(axis=-1))  # (M,)
                total_loss += float(out.mlm_loss.item()) * len(targets)
                right += int((predicted == targets).sum())
                count += len(targets)
                real = int(batch["attention_mask"].sum())
                rtd_loss += float(out.rtd_loss.item()) * real
                rtd_right += float(out.rtd_accuracy) * real
                labels = backend.to_numpy(out.rtd_labels)  # (B, S) 1 replaced, 0 not, -100 pad
                rtd_scores.append(backend.to_numpy(out.discriminator_logits.data)[labels != -100])
                rtd_replaced.append(labels[labels != -100] == 1)
                tokens += real
        model.train()
        loss = total_loss / max(count, 1)
        replaced = np.concatenate(rtd_replaced)
        return {
            "eval_loss": loss, "eval_accuracy": right / max(count, 1),
            "eval_perplexity": math.exp(min(loss, 50.0)),
            "eval_rtd_loss": rtd_loss / max(tokens, 1),
            "eval_rtd_accuracy": rtd_right / max(tokens, 1),
            # what answering "original" everywhere would score, and the threshold-free measure
            "eval_rtd_original_share": float(1.0 - replaced.mean()),
            "eval_rtd_auc": replaced_token_auc(np.concatenate(rtd_scores), replaced),
        }

    def report(self, result: dict) -> str:
        return (f"{super().report(result)}, replaced-token detection "
                f"{result['eval_rtd_accuracy']:.1%} (all-original "
                f"{result['eval_rtd_original_share']:.1%}), AUC {result['eval_rtd_auc']:.3f}")

    def finish(self, model, log) -> dict:
        return {}  # the fact probes ask a masked language model; the discriminator is not one
