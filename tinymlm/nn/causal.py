"""BERT as a left-to-right language model: Hugging Face's ``BertLMHeadModel``.

The same encoder and head as ``BertForMaskedLM``, parameter for parameter (so the two load each
other's folders, as in ``transformers``), with two differences that make it autoregressive:

- ``is_decoder=True``: every self-attention is causal, so position t sees positions 0..t only
  and its output cannot depend on any later token;
- the next-token loss: ``labels`` are aligned with ``input_ids`` (usually a copy of them, -100
  where nothing is to be predicted) and the model shifts them itself, as ``transformers`` does:
  the logits at t are scored against the label at t + 1,
  ``loss = cross_entropy(logits[:, :-1], labels[:, 1:])``.

Shapes: B batch, S sequence length, H hidden size, V the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tinymlm import backend
from tinymlm.autograd import Tensor, raw
from tinymlm.nn import functional as F
from tinymlm.nn.bert import BertConfig, BertModel, BertOnlyMLMHead, BertPreTrainedModel, skip_init


@dataclass
class CausalLMOutput:
    loss: Tensor | None  # 0-d, labels given
    logits: Tensor | None  # (B, S, V), with or without labels; None for return_logits=False


class BertLMHeadModel(BertPreTrainedModel):
    """BERT with causal self-attention and the language-model head: predicts the next token."""

    def __init__(self, config: BertConfig):
        super().__init__()
        # A copy with is_decoder forced, as transformers' BertLMHeadModel expects it: the
        # caller's config (an MLM's, perhaps) is left as it was.
        self.config = replace(config, is_decoder=True, extra=dict(config.extra))
        with skip_init():  # initialised once, below, with the head
            self.bert = BertModel(self.config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(self.config, self.bert.embeddings.word_embeddings.weight)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                return_logits=True) -> CausalLMOutput:
        """``return_logits=False`` (with labels): only the loss, and ``logits`` is None; the
        head then never hands out its logits and the fused loss may reuse their memory."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        head = self.cls.predictions
        if labels is None:
            return CausalLMOutput(loss=None, logits=head(hidden))  # (B, S, V)
        B, S, H = hidden.shape
        # Position t predicts the token at t + 1: the last position has nothing to predict and
        # the first label (usually [CLS]) is never a target.
        labels = backend.asarray_on(raw(labels), hidden.data, np.int64)  # (B, S)
        targets = labels[:, 1:].reshape(-1)  # (B·(S-1),)
        if not return_logits:
            rows = hidden[:, :-1].reshape(B * (S - 1), H)  # (B·(S-1), H)
            return CausalLMOutput(loss=head.loss(rows, targets), logits=None)
        logits = head(hidden)  # (B, S, V)
        loss = F.cross_entropy(logits[:, :-1].reshape(B * (S - 1), -1), targets)
        return CausalLMOutput(loss=loss, logits=logits)
