"""Fine-tuning heads: BERT for sequence classification, token classification and span QA.

Each model is Hugging Face's, parameter for parameter and number for number: the encoder is
``bert`` (a ``BertModel``), the head a dropout and one linear layer on top, and the outputs
carry Hugging Face's field names. A folder written by ``transformers`` loads here and gives
the same logits, loss and gradients; a folder written here loads in ``transformers``.

    sequence classification   pooled = tanh(W_p h_[CLS] + b_p)            (B, H)
                              logits = W_c dropout(pooled) + b_c         (B, C)
                              loss   = mean_b CE(logits_b, label_b)
    token classification      logits = W_c dropout(h) + b_c              (B, S, C)
                              loss   = mean over positions with label != -100 of CE
    question answering        [start | end] = W_qa h + b_qa              (B, S, 2)
                              loss   = (CE(start, s) + CE(end, e)) / 2

In QA, as in Hugging Face, gold positions are clamped to [0, S] and the position S (outside
the sequence: an answer cut off by truncation) is ignored.

The number of labels is Hugging Face's ``config.num_labels``: the length of ``id2label`` in
the config (``BertConfig.extra``), else ``extra["num_labels"]``, else 2. ``num_labels=`` or
``id2label=`` given to the constructor or ``from_pretrained`` set it, and ``save_pretrained``
writes ``id2label``/``label2id`` so the folder loads in ``transformers`` with the same head.

``from_pretrained`` on a pretraining folder (a ``BertForMaskedLM`` or bare encoder) loads the
encoder and initialises the head, and the pooler where the folder has none, with normal(0,
initializer_range) weights and zero biases, naming them in a warning (Hugging Face does the
same): the class attribute ``_keys_to_initialize`` lists the prefixes allowed to be missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinymlm import backend
from tinymlm.autograd import Tensor, raw
from tinymlm.nn import functional as F
from tinymlm.nn.bert import BertConfig, BertModel, BertPreTrainedModel
from tinymlm.nn.layers import Dropout, Linear

# --- outputs (Hugging Face's field names) --------------------------------------------------------


@dataclass
class SequenceClassifierOutput:
    loss: Tensor | None  # 0-d, labels given
    logits: Tensor  # (B, C)


@dataclass
class TokenClassifierOutput:
    loss: Tensor | None  # 0-d, labels given
    logits: Tensor  # (B, S, C)


@dataclass
class QuestionAnsweringModelOutput:
    loss: Tensor | None  # 0-d, start and end positions given
    start_logits: Tensor  # (B, S)
    end_logits: Tensor  # (B, S)


# --- labels in the config ------------------------------------------------------------------------


def num_labels_of(config: BertConfig) -> int:
    """Hugging Face's ``config.num_labels``: len(id2label), else ``num_labels``, else 2."""
    id2label = config.extra.get("id2label")
    if id2label:
        return len(id2label)
    return int(config.extra.get("num_labels", 2))


def with_labels(config: BertConfig, num_labels: int | None = None, id2label=None) -> BertConfig:
    """A copy of ``config`` whose label set is ``id2label`` (a list of names, or a dict
    id -> name), or ``num_labels`` generic names LABEL_0 ... (Hugging Face's), or unchanged."""
    if id2label is not None:
        names = (
            list(id2label)
            if not isinstance(id2label, dict)
            else [id2label[k] for k in sorted(id2label, key=int)]
        )
        if num_labels is not None and num_labels != len(names):
            raise ValueError(f"num_labels={num_labels} but id2label names {len(names)} labels")
    elif num_labels is not None:
        if int(num_labels) < 1:
            raise ValueError(f"num_labels must be a positive integer, got {num_labels}")
        old = config.extra.get("id2label") or {}
        names = (
            [old[k] for k in sorted(old, key=int)]
            if len(old) == num_labels
            else [f"LABEL_{i}" for i in range(int(num_labels))]
        )
    else:
        return config
    fields = config.to_dict()
    fields.pop("num_labels", None)  # id2label says it now
    fields["id2label"] = {str(i): str(name) for i, name in enumerate(names)}
    fields["label2id"] = {str(name): i for i, name in enumerate(names)}
    return BertConfig.from_dict(fields)


def _head_dropout(config: BertConfig) -> float:
    """Hugging Face's classifier_dropout, which falls back on hidden_dropout_prob."""
    p = config.extra.get("classifier_dropout")
    return config.hidden_dropout_prob if p is None else float(p)


# --- the models ----------------------------------------------------------------------------------


class BertForDownstreamTask(BertPreTrainedModel):
    """What the three heads share: the label set and loading with a fresh head."""

    _keys_to_initialize: tuple[str, ...] = ()  # missing from a folder: initialised, with a warning

    @classmethod
    def from_pretrained(
        cls, path, num_labels: int | None = None, id2label=None, dtype=None, device: str = "cpu"
    ):
        """Load ``path`` (a fine-tuned folder, or a pretrained MLM / encoder folder whose head
        is then initialised). ``num_labels`` / ``id2label`` set the label set of a new head."""
        from tinymlm.checkpoint import load_model, read_config

        config = with_labels(read_config(path), num_labels, id2label)
        return load_model(cls, path, dtype=dtype, device=device, config=config)

    @property
    def id2label(self) -> dict[int, str]:
        stored = self.config.extra.get("id2label") or {}
        return {int(k): v for k, v in stored.items()} or {
            i: f"LABEL_{i}" for i in range(num_labels_of(self.config))
        }


class BertForSequenceClassification(BertForDownstreamTask):
    """[CLS] -> pooler -> dropout -> classifier: one label per sequence (or sentence pair)."""

    _keys_to_initialize = ("classifier.", "bert.pooler.")

    def __init__(self, config: BertConfig, num_labels: int | None = None, id2label=None):
        super().__init__()
        config = with_labels(config, num_labels, id2label)
        if config.extra.get("problem_type") not in (None, "single_label_classification"):
            raise ValueError(
                f"problem_type {config.extra['problem_type']!r} is not supported: "
                "tinymlm classifies with one label per sequence"
            )
        self.config = config
        self.num_labels = num_labels_of(config)
        if self.num_labels < 2:
            raise ValueError(
                "BertForSequenceClassification needs num_labels >= 2 (regression "
                "with num_labels=1 is not supported)"
            )
        self.bert = BertModel(config, add_pooling_layer=True)
        self.dropout = Dropout(_head_dropout(config))
        self.classifier = Linear(config.hidden_size, self.num_labels)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        pooled = self.bert(input_ids, attention_mask, token_type_ids).pooler_output  # (B, H)
        logits = self.classifier(self.dropout(pooled))  # (B, C)
        loss = None
        if labels is not None:
            labels = backend.asarray_on(raw(labels), logits.data, np.int64).reshape(-1)  # (B,)
            loss = F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class BertForTokenClassification(BertForDownstreamTask):
    """Every hidden state -> dropout -> classifier: one label per token (-100 = not scored)."""

    _keys_to_initialize = ("classifier.",)

    def __init__(self, config: BertConfig, num_labels: int | None = None, id2label=None):
        super().__init__()
        config = with_labels(config, num_labels, id2label)
        self.config = config
        self.num_labels = num_labels_of(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = Dropout(_head_dropout(config))
        self.classifier = Linear(config.hidden_size, self.num_labels)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.classifier(self.dropout(hidden))  # (B, S, C)
        loss = None
        if labels is not None:
            B, S, C = logits.shape
            labels = backend.asarray_on(raw(labels), logits.data, np.int64).reshape(-1)  # (B·S,)
            loss = F.cross_entropy(logits.reshape(B * S, C), labels)
        return TokenClassifierOutput(loss=loss, logits=logits)


class BertForQuestionAnswering(BertForDownstreamTask):
    """Every hidden state -> qa_outputs (H -> 2): a start and an end logit per token."""

    _keys_to_initialize = ("qa_outputs.",)

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        start_positions=None,
        end_positions=None,
    ):
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.qa_outputs(hidden)  # (B, S, 2)
        start_logits = logits[:, :, 0]  # (B, S)
        end_logits = logits[:, :, 1]  # (B, S)
        loss = None
        if start_positions is not None and end_positions is not None:
            S = start_logits.shape[1]
            xp = backend.get_array_module(logits.data)
            # Positions outside the sequence (answers truncated away) become S and are ignored.
            start = backend.asarray_on(raw(start_positions), logits.data, np.int64)
            end = backend.asarray_on(raw(end_positions), logits.data, np.int64)
            start = xp.clip(start.reshape(-1), 0, S)  # (B,)
            end = xp.clip(end.reshape(-1), 0, S)  # (B,)
            loss = (
                F.cross_entropy(start_logits, start, ignore_index=S)
                + F.cross_entropy(end_logits, end, ignore_index=S)
            ) * 0.5
        return QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits
        )


__all__ = [
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "QuestionAnsweringModelOutput",
    "SequenceClassifierOutput",
    "TokenClassifierOutput",
    "num_labels_of",
    "with_labels",
]
