"""What every objective answers for the trainer, and the encoder sizes they share.

An objective is one way of turning data into a loss: masked language modeling, ELECTRA's
replaced-token detection, a fine-tuning head. The trainer (``tinymlm.trainer``) runs any of
them with the same loop: it asks the objective for the model, for the micro-batch of a step,
for that batch's loss and cost, and for an evaluation, and it never looks inside a batch.
"""

from __future__ import annotations

from pathlib import Path

from tinymlm.nn.bert import BertConfig

MODEL_SIZES = {  # name: (layers, hidden); heads = hidden / 64, intermediate = 4 · hidden
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
}


def bert_config(size: str, vocab_size: int, max_length: int, dropout: float) -> BertConfig:
    """The BertConfig of a named size (``MODEL_SIZES``) for a vocabulary and sequence length."""
    layers, hidden = MODEL_SIZES[size]
    return BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
        max_position_embeddings=max(512, max_length), hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def train_flops(config: BertConfig, batch: int, seq: int, predicted: int) -> float:
    """Floating-point operations of one forward + backward (≈ 3 × forward) of a BERT encoder
    on (batch, seq) tokens, with the MLM head on ``predicted`` positions."""
    H, I, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, \
        config.vocab_size
    per_token = L * (2 * 4 * H * H + 2 * 2 * H * I + 2 * 2 * seq * H)  # projections, FFN, attention
    head = predicted * 2 * (H * H + H * V)
    return 3.0 * (batch * seq * per_token + head)


class Objective:
    """The contract between an objective and the trainer.

    A subclass holds its data (built in its constructor, so bad input is reported before a
    run folder is made) and its tokenizer, and implements ``build_model``, ``batch`` and
    ``evaluate``. Randomness in a batch must be a function of the step or of the state that
    ``state_dict`` returns: that is what makes a resumed run equal an uninterrupted one.
    """

    title = "training"  # the loss curve's title, before the run folder's name
    accuracy_label = "held-out accuracy"  # what eval_accuracy measures, for the plot
    tokenizer = None

    def build_model(self):
        """The model to train, its new parameters drawn from the run's seed."""
        raise NotImplementedError

    def batch(self, step: int, micro: int) -> dict:
        """Micro-batch ``micro`` of optimizer step ``step`` (1-based): the model's keywords."""
        raise NotImplementedError

    def loss(self, model, batch: dict):
        """The 0-d loss Tensor of a batch (the mean the trainer accumulates and backpropagates)."""
        return model(**batch).loss

    def counts(self, batch: dict) -> tuple[int, ...] | None:
        """Data-parallel training (``tinymlm.distributed``): how many items (predicted tokens)
        each of ``loss_terms``' means is taken over, read from the batch before any forward
        pass; None: this objective cannot yet train over several processes."""
        return None

    def loss_terms(self, model, batch: dict) -> tuple:
        """The loss as a sum of 0-d means, one for each of ``counts``: rank r scales a term by
        its c_r / Σ c, so the gradients summed over the ranks are the whole batch's."""
        return (self.loss(model, batch),)

    def flops(self, model, batch: dict) -> float:
        """Training FLOPs of a batch (forward + backward), for the GFLOP/s the log shows."""
        return 0.0

    def evaluate(self, model) -> dict:
        """Held-out metrics, ``eval_loss`` and ``eval_accuracy`` among them; the model is left
        in training mode."""
        raise NotImplementedError

    def report(self, result: dict) -> str:
        """``evaluate``'s result in one line of the progress log."""
        return ", ".join(f"{k.removeprefix('eval_')} {v:.3f}" for k, v in result.items())

    def summary(self, model) -> str:
        """One line on the model and the data, printed when training starts."""
        return f"{model.num_parameters() / 1e6:.2f}M parameters"

    def finish(self, model, log) -> dict:
        """After the last step: anything more to report (a row of metrics.jsonl if not empty)."""
        return {}

    def save(self, model, folder: Path) -> None:
        """The model and the tokenizer, as a folder ``from_pretrained`` reads."""
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def state_dict(self) -> dict:
        """What the objective must remember across a resume (e.g. a masking RNG); JSON."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
