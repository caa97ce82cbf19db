"""BERT: the encoder and the masked-language-model head, parameter for parameter as Hugging Face.

Module and attribute names mirror ``transformers``' BertModel / BertForMaskedLM, so
``named_parameters()`` gives exactly the names in their checkpoint files
(``bert.encoder.layer.0.attention.self.query.weight``, ``cls.predictions.bias``, ...).

Shapes: B batch, S sequence length, H hidden size, h heads, d = H / h head size, I the
intermediate size, V the vocabulary, M the number of predicted (masked) positions.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from tinymlm import backend, ops
from tinymlm.autograd import Tensor, raw
from tinymlm.nn import functional as F
from tinymlm.nn.layers import Dropout, Embedding, LayerNorm, Linear
from tinymlm.nn.module import Module, ModuleList, Parameter


@dataclass
class BertConfig:
    """Hugging Face's BertConfig fields and defaults (bert-base), plus ``pre_layer_norm``.

    ``pre_layer_norm=True`` gives the pre-LN encoder of efficient-BERT recipes (Cramming): each
    sub-layer normalises its input and a final LayerNorm closes the encoder. Hugging Face's
    BertModel has no such option, so a pre-LN checkpoint loads there with different results.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    pre_layer_norm: bool = False
    is_decoder: bool = False  # causal self-attention (BertLMHeadModel sets it)
    extra: dict = field(default_factory=dict, repr=False)  # other fields of a config.json

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.hidden_act != "gelu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported: use 'gelu'")
        if self.position_embedding_type != "absolute":
            raise ValueError("only position_embedding_type 'absolute' is supported")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BertConfig:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in d.items() if k in known},
            extra={k: v for k, v in d.items() if k not in known},
        )


# --- the encoder ---------------------------------------------------------------------------------


class BertEmbeddings(Module):
    """word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.word_embeddings = Embedding(config.vocab_size, H, padding_idx=config.pad_token_id)
        self.position_embeddings = Embedding(config.max_position_embeddings, H)
        self.token_type_embeddings = Embedding(config.type_vocab_size, H)
        self.LayerNorm = LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        xp = backend.get_array_module(input_ids)
        S = input_ids.shape[1]
        x = self.word_embeddings(input_ids)  # (B, S, H)
        x = x + self.position_embeddings(xp.arange(S))  # (S, H) broadcast over B
        x = x + self.token_type_embeddings(token_type_ids)  # (B, S, H)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_size = H // self.num_heads
        self.query = Linear(H, H)
        self.key = Linear(H, H)
        self.value = Linear(H, H)
        self.dropout_p = config.attention_probs_dropout_prob
        self.is_causal = config.is_decoder  # a decoder's query i sees keys 0..i only

    def _split_heads(self, x):
        B, S, _ = x.shape
        return x.reshape(B, S, self.num_heads, self.head_size).permute(0, 2, 1, 3)  # (B, h, S, d)

    def forward(self, x, attention_mask):
        B, S, H = x.shape
        # query, key and value as one product with their weights stacked (3H, H): the same
        # numbers as three Linears, but BLAS is far faster at one (N, H) x (H, 3H) product and
        # above all at its weight gradient Gᵀ X (3H, H) than at three (H, H) ones, whose tall
        # reduction over N = B·S OpenBLAS splits badly across threads (benchmarks/results/).
        parts = (self.query, self.key, self.value)
        weight = ops.concatenate([p.weight for p in parts], axis=0)  # (3H, H)
        bias = ops.concatenate([p.bias for p in parts], axis=0)  # (3H,)
        qkv = F.linear(x, weight, bias).reshape(B, S, 3, self.num_heads, self.head_size)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, h, S, d)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, h, S, d) each
        context = F.scaled_dot_product_attention(
            q, k, v, attention_mask, dropout_p=self.dropout_p, training=self.training,
            is_causal=self.is_causal,
        )  # (B, h, S, d)
        return context.permute(0, 2, 1, 3).reshape(B, S, H)  # (B, S, H)


class BertSelfOutput(Module):
    """dense -> dropout -> LayerNorm(· + residual); in pre-LN the LayerNorm moves to the input."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)


class BertAttention(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)


class BertIntermediate(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))  # (B, S, I)


class BertOutput(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)


class BertLayer(Module):
    """One encoder layer: self-attention then feed-forward, each with a residual and LayerNorm.

    post-LN (BERT):  x = LN(x + Attn(x));      x = LN(x + FFN(x))
    pre-LN:          x = x + Attn(LN(x));      x = x + FFN(LN(x))
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.pre_layer_norm = config.pre_layer_norm
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x, attention_mask):
        attn, ffn = self.attention.output, self.output
        if self.pre_layer_norm:
            a = attn.dense(self.attention.self(attn.LayerNorm(x), attention_mask))
            x = x + attn.dropout(a)  # (B, S, H)
            f = ffn.dense(self.intermediate(ffn.LayerNorm(x)))
            return x + ffn.dropout(f)  # (B, S, H)
        a = attn.dense(self.attention.self(x, attention_mask))
        x = attn.LayerNorm(attn.dropout(a) + x)  # (B, S, H)
        f = ffn.dense(self.intermediate(x))
        return ffn.LayerNorm(ffn.dropout(f) + x)  # (B, S, H)


class BertEncoder(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        if config.pre_layer_norm:
            self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, attention_mask):
        for layer in self.layer:
            x = layer(x, attention_mask)
        if "LayerNorm" in self._modules:
            x = self.LayerNorm(x)
        return x


class BertPooler(Module):
    """tanh(dense(hidden state of [CLS])): the sentence vector of BERT's classifier heads."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return self.dense(hidden[:, 0]).tanh()  # (B, H)


# --- the models ----------------------------------------------------------------------------------


@dataclass
class BaseModelOutput:
    last_hidden_state: Tensor  # (B, S, H)
    pooler_output: Tensor | None = None  # (B, H)


@dataclass
class MaskedLMOutput:
    loss: Tensor | None  # 0-d, labels given
    logits: Tensor | None  # (M, V) with labels and sparse prediction; (B, S, V) otherwise;
    # None when the caller asked for the loss alone (return_logits=False)


_initialize = True  # False while building a model only to load weights into it


def init_bert_parameters(named_parameters, std: float) -> None:
    """BERT's rule, in place: LayerNorm weight 1 and bias 0, other biases 0, every other
    matrix and embedding normal(0, std), drawn from the seeded CPU generator in name order."""
    rng = backend.default_generator("cpu")
    for name, p in named_parameters:
        if "LayerNorm" in name:
            value = np.ones(p.shape) if name.endswith("weight") else np.zeros(p.shape)
        elif name.endswith("bias"):
            value = np.zeros(p.shape)
        else:
            value = rng.normal(0.0, std, size=p.shape)
        p.data = backend.to_device(value.astype(p.dtype), p.device)


@contextmanager
def skip_init():
    """Build models without drawing their random initialisation (loading overwrites it)."""
    global _initialize
    previous, _initialize = _initialize, False
    try:
        yield
    finally:
        _initialize = previous


class BertPreTrainedModel(Module):
    """Initialisation, saving and loading shared by every BERT model."""

    base_model_prefix = "bert"

    def init_weights(self) -> None:
        """BERT's initialisation: normal(0, initializer_range) matrices and embeddings, zero
        biases, LayerNorm weight 1 and bias 0, the padding row zero (CPU generator, seeded)."""
        if not _initialize:
            return
        init_bert_parameters(self.named_parameters(), self.config.initializer_range)
        words = self.bert.embeddings.word_embeddings if hasattr(self, "bert") else (
            self.embeddings.word_embeddings)
        if self.config.pad_token_id is not None:
            words.weight.data[self.config.pad_token_id] = 0

    def save_pretrained(self, path) -> None:
        from tinymlm.checkpoint import save_model

        save_model(self, path)

    @classmethod
    def from_pretrained(cls, path, dtype=None, device: str = "cpu"):
        from tinymlm.checkpoint import load_model

        return load_model(cls, path, dtype=dtype, device=device)


class BertModel(BertPreTrainedModel):
    """The encoder: ids (B, S) -> last_hidden_state (B, S, H) (+ pooler_output if asked)."""

    base_model_prefix = ""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = False):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        if add_pooling_layer:
            self.pooler = BertPooler(config)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> BaseModelOutput:
        like = self.embeddings.word_embeddings.weight.data
        input_ids = backend.asarray_on(raw(input_ids), like, np.int64)
        xp = backend.get_array_module(like)
        if attention_mask is None:
            attention_mask = xp.ones(input_ids.shape, dtype=np.int64)
        if token_type_ids is None:
            token_type_ids = xp.zeros(input_ids.shape, dtype=np.int64)
        attention_mask = backend.asarray_on(raw(attention_mask), like, np.int64)
        token_type_ids = backend.asarray_on(raw(token_type_ids), like, np.int64)
        x = self.embeddings(input_ids, token_type_ids)  # (B, S, H)
        x = self.encoder(x, attention_mask)  # (B, S, H)
        pooled = self.pooler(x) if "pooler" in self._modules else None
        return BaseModelOutput(last_hidden_state=x, pooler_output=pooled)


class BertPredictionHeadTransform(Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertLMPredictionHead(Module):
    """transform -> tied decoder (the word embeddings, transposed) + its own bias (V,)."""

    def __init__(self, config: BertConfig, word_embeddings: Parameter):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = Parameter(np.zeros(config.vocab_size, dtype=np.float32))
        self._decoder_weight = word_embeddings  # tied: not registered again (plain attribute)

    def forward(self, x):
        return F.linear(self.transform(x), self._decoder_weight, self.bias)  # (..., V)

    def loss(self, x, targets):
        """Mean cross-entropy of the head's logits for x (M, H) against targets (M,), without
        handing the logits out: the fused path may then reuse their buffer for the gradient."""
        return F.linear_cross_entropy(self.transform(x), self._decoder_weight, self.bias, targets)


class BertOnlyMLMHead(Module):
    def __init__(self, config: BertConfig, word_embeddings: Parameter):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)


class BertForMaskedLM(BertPreTrainedModel):
    """BERT with the masked-language-model head.

    With ``labels`` (B, S) (-100 = not predicted) and ``sparse_prediction`` (the default), only
    the M rows whose label is not -100 go through the head, gathered in row-major order of
    their positions: the loss is the same as predicting every position, and the head's cost
    falls by S·B/M (about 6.7 times at 15% masking). Google's BERT and Cramming do the same.
    """

    def __init__(self, config: BertConfig, sparse_prediction: bool = True):
        super().__init__()
        self.config = config
        self.sparse_prediction = sparse_prediction
        with skip_init():  # initialised once, below, with the head
            self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config, self.bert.embeddings.word_embeddings.weight)
        self.init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                return_logits=True):
        """``return_logits=False`` (with labels): only the loss, and ``logits`` is None. The
        logits then never leave the loss, which may reuse their memory for their gradient
        (the trainer's choice); with True they are the user's, and nothing writes into them."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        head = self.cls.predictions
        if labels is None:
            return MaskedLMOutput(loss=None, logits=head(hidden))  # (B, S, V)
        B, S, H = hidden.shape
        rows = hidden.reshape(B * S, H)  # (B·S, H)
        if self.sparse_prediction:
            # Find the M predicted positions where the labels live (the host, when the collator
            # made them) and copy only those: on the GPU, flatnonzero would wait for the device.
            flat = raw(labels)
            flat = flat if hasattr(flat, "reshape") else backend.to_numpy(flat)  # a list: host
            flat = flat.reshape(-1)  # (B·S,)
            predicted = backend.get_array_module(flat).flatnonzero(flat != -100)  # (M,)
            targets = backend.asarray_on(flat[predicted], hidden.data, np.int64)  # (M,)
            rows = ops.getitem(rows, backend.asarray_on(predicted, hidden.data, np.int64))  # (M, H)
        else:
            targets = backend.asarray_on(raw(labels), hidden.data, np.int64).reshape(-1)  # (B·S,)
        if not return_logits:
            return MaskedLMOutput(loss=head.loss(rows, targets), logits=None)
        logits = head(rows)  # (M, V), or (B·S, V) without sparse prediction
        loss = F.cross_entropy(logits, targets)
        if not self.sparse_prediction:
            logits = logits.reshape(B, S, -1)  # (B, S, V)
        return MaskedLMOutput(loss=loss, logits=logits)
