"""ELECTRA pretraining: a small generator fills in the masked tokens, a discriminator spots them.

Clark et al. (2020). Each training batch goes through two networks:

1. The **generator**, a small masked language model, predicts the masked positions (loss:
   the usual MLM cross-entropy, L_MLM). For every masked position it *samples* a token from
   its softmax; the samples replace the masked tokens, every other token stays the original.
   Sampling is not differentiable and is not differentiated: the ids are plain integers.
2. The **discriminator**, a BERT encoder with a one-logit head, reads that corrupted sequence
   and predicts, for every real token, "replaced" (1) or "original" (0): replaced-token
   detection, a sigmoid cross-entropy averaged over the real tokens (L_RTD). A sample that
   happens to equal the original counts as original. Every token teaches, not only the 15%
   that were masked, and [MASK] never reaches the discriminator.

    loss = L_MLM + λ · L_RTD        (λ = 50, the paper's weight: L_RTD is much smaller)

**Shared embeddings.** Generator and discriminator share one embedding module (word, position
and token-type tables and their LayerNorm), as ELECTRA does. They have different widths, so
one side needs a projection. Here the embeddings have the *discriminator's* width H, so that
the discriminator stays an ordinary ``BertModel`` (saved as a Hugging Face BERT folder, ready
to fine-tune like any MLM encoder); the generator of width h = ``generator_size``·H gets
ELECTRA's ``embeddings_project`` (H -> h) on its way in, and its prediction head maps back
h -> H before the tied decoder (the word embeddings, transposed). These are the names and
shapes of Hugging Face's ``ElectraForMaskedLM`` with ``embedding_size`` = H.

**Sampling** uses the inverse CDF on the generator's softmax restricted to ordinary tokens
(special tokens such as [MASK], [PAD], [CLS] get probability 0, so the discriminator never
sees a [MASK] or a stray [CLS]). The uniforms come from ``tinymlm.backend.default_generator``
of the inputs' device, which the trainer reseeds every step, so a run is reproducible.

Shapes: B batch, S sequence, H discriminator width, h generator width, V vocabulary,
M masked positions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinymlm import backend, ops
from tinymlm.autograd import Function, Tensor, raw
from tinymlm.nn import functional as F
from tinymlm.nn.bert import BertConfig, BertEncoder, BertModel, init_bert_parameters
from tinymlm.nn.layers import LayerNorm, Linear
from tinymlm.nn.module import Module, Parameter

HEADS_FILE = "electra.safetensors"  # the generator and the discriminator's head, beside the encoder


# --- the replaced-token-detection loss ------------------------------------------------------------


class BinaryCrossEntropyWithLogits(Function):
    """Mean over counted elements of the sigmoid cross-entropy of logits x against targets y.

    With σ the sigmoid, ℓ(x, y) = −y log σ(x) − (1 − y) log(1 − σ(x)). Since
    log σ(x) = −log(1 + e^(−x)) and log(1 − σ(x)) = −x − log(1 + e^(−x)):

        ℓ(x, y) = max(x, 0) − x y + log(1 + e^(−|x|))      (never exp of a large number)

    dℓ/dx = σ(x) − y. With weights c ∈ {0, 1} (1 = counted) and N = Σ c, the loss is
    Σ c ℓ / N and its gradient c (σ(x) − y) / N. With nothing counted the loss is 0.
    """

    def forward(self, logits, target, counted):
        xp = backend.get_array_module(logits, target, counted)
        target = target.astype(logits.dtype)
        counted = counted.astype(logits.dtype)
        per_element = (
            xp.maximum(logits, 0) - logits * target + xp.log1p(xp.exp(-xp.abs(logits)))
        )  # (...)
        self.inv_count = 1 / xp.maximum(counted.sum(), 1)  # 0-d, the logits' dtype
        self.save_for_backward(logits, target, counted)
        return (per_element * counted).sum() * self.inv_count

    def backward(self, g):
        logits, target, counted = self.saved_tensors
        xp = backend.get_array_module(logits)
        e = xp.exp(-xp.abs(logits))  # in (0, 1]: no overflow on either side
        sigmoid = xp.where(logits >= 0, 1 / (1 + e), e / (1 + e))  # σ(x)
        return (sigmoid - target) * counted * (g * self.inv_count), None, None


def binary_cross_entropy_with_logits(logits, target, counted=None):
    """PyTorch's ``binary_cross_entropy_with_logits`` (mean), over elements where ``counted``."""
    shape = tuple(raw(logits).shape)
    target = raw(target)
    if tuple(target.shape) != shape:
        raise ValueError(
            f"binary_cross_entropy_with_logits: logits {shape} and "
            f"target {tuple(target.shape)} must have the same shape"
        )
    if counted is None:
        counted = backend.get_array_module(raw(logits)).ones(shape, dtype=bool)
    return BinaryCrossEntropyWithLogits.apply(logits, target, counted)


# --- configuration --------------------------------------------------------------------------------


def generator_config(discriminator: BertConfig, size: float) -> BertConfig:
    """The generator's BertConfig: ``size`` times the discriminator's width, heads and FFN.

    ELECTRA's rule: same depth, hidden size, heads and intermediate size scaled by ``size``
    (the paper finds ¼ to ½ best). Heads are at least one and divide the width.
    """
    if not 0 < size <= 1:
        raise ValueError(f"generator size must be a fraction in (0, 1], got {size}")
    heads = max(1, int(discriminator.num_attention_heads * size))
    hidden = max(1, round(discriminator.hidden_size * size / heads)) * heads
    intermediate = max(1, round(discriminator.intermediate_size * size))
    settings = discriminator.to_dict()
    settings.update(hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate)
    return BertConfig.from_dict(settings)


# --- the two networks ----------------------------------------------------------------------------


class ElectraGeneratorPredictions(Module):
    """h -> H: dense, GELU, LayerNorm (Hugging Face's ElectraGeneratorPredictions)."""

    def __init__(self, generator: BertConfig, embedding_size: int):
        super().__init__()
        self.dense = Linear(generator.hidden_size, embedding_size)
        self.LayerNorm = LayerNorm(embedding_size, eps=generator.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(F.gelu(self.dense(x)))  # (..., H)


class ElectraGenerator(Module):
    """The small masked language model: shared embeddings -> project -> encoder -> head.

    The embeddings module is the discriminator's; it is held as a plain attribute (not a
    sub-module), so its parameters are named once, under the discriminator.
    """

    def __init__(self, config: BertConfig, embeddings, embedding_size: int):
        super().__init__()
        self.config = config
        object.__setattr__(self, "_embeddings", embeddings)  # shared, not registered again
        self.embeddings_project = Linear(embedding_size, config.hidden_size)
        self.encoder = BertEncoder(config)
        self.generator_predictions = ElectraGeneratorPredictions(config, embedding_size)
        self.generator_lm_head_bias = Parameter(np.zeros(config.vocab_size, dtype=np.float32))

    def forward(self, input_ids, attention_mask, token_type_ids, predicted):
        """Logits (M, V) of the positions ``predicted`` (flat row-major indices into B·S)."""
        x = self.embeddings_project(self._embeddings(input_ids, token_type_ids))  # (B, S, h)
        x = self.encoder(x, attention_mask)  # (B, S, h)
        B, S, h = x.shape
        rows = ops.getitem(x.reshape(B * S, h), predicted)  # (M, h)
        words = self._embeddings.word_embeddings.weight  # (V, H), tied decoder
        return F.linear(self.generator_predictions(rows), words, self.generator_lm_head_bias)


class ElectraDiscriminatorPredictions(Module):
    """H -> 1 per token: dense, GELU, dense_prediction (Hugging Face's names)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.dense_prediction = Linear(config.hidden_size, 1)

    def forward(self, hidden):
        B, S, H = hidden.shape
        return self.dense_prediction(F.gelu(self.dense(hidden))).reshape(B, S)  # (B, S)


# --- the pretraining model -----------------------------------------------------------------------


@dataclass
class ElectraOutput:
    loss: Tensor  # 0-d: mlm_loss + λ·rtd_loss
    mlm_loss: Tensor  # 0-d, the generator's
    rtd_loss: Tensor  # 0-d, the discriminator's
    rtd_accuracy: object  # 0-d array: share of real tokens the discriminator labels right
    generator_logits: Tensor  # (M, V)
    discriminator_logits: Tensor  # (B, S)
    corrupted_ids: object  # (B, S) what the discriminator read
    rtd_labels: object  # (B, S) 1 = replaced, 0 = original; -100 on padding


class ElectraForPretraining(Module):
    """Generator + discriminator (a ``BertModel``) + the discriminator's head.

    ``special_token_ids`` are never sampled by the generator (give the tokenizer's special ids;
    [MASK] must be among them). ``rtd_weight`` is λ.
    """

    def __init__(
        self,
        config: BertConfig,
        generator: BertConfig,
        special_token_ids=(),
        rtd_weight: float = 50.0,
    ):
        super().__init__()
        if generator.vocab_size != config.vocab_size:
            raise ValueError("the generator and the discriminator need the same vocabulary")
        self.config = config
        self.rtd_weight = float(rtd_weight)
        self.discriminator = BertModel(config, add_pooling_layer=False)
        self.discriminator_predictions = ElectraDiscriminatorPredictions(config)
        self.generator = ElectraGenerator(
            generator, self.discriminator.embeddings, config.hidden_size
        )
        self.samplable = np.ones(config.vocab_size, dtype=bool)  # (V,) on the host
        self.samplable[list(special_token_ids)] = False
        self.last_samplable_id = int(np.flatnonzero(self.samplable)[-1])
        self._init_weights()

    def _init_weights(self) -> None:
        """BERT's rule for the new parts (head and generator): normal(0, initializer_range)
        matrices, zero biases, LayerNorm 1 and 0. The discriminator was initialised by BertModel."""
        new_parts = ((n, p) for n, p in self.named_parameters()
                     if not n.startswith("discriminator."))
        init_bert_parameters(new_parts, self.config.initializer_range)

    def sample(self, logits, generator=None):
        """One token per row of ``logits`` (M, V) from softmax(logits) over samplable tokens.

        Inverse CDF: with c the running sum of the (unnormalised) probabilities and one
        uniform u in [0, c_V) per row, the sample is the first j with c_j > u, that is the
        number of j with c_j <= u. Tokens of probability 0 (special ones) are never first.
        """
        xp = backend.get_array_module(logits)
        if generator is None:
            generator = backend.default_generator(backend.device_of(logits))
        samplable = xp.asarray(self.samplable)  # (V,)
        z = xp.where(samplable, logits, -xp.inf)  # (M, V)
        weights = xp.exp(z - z.max(axis=1, keepdims=True))  # (M, V) unnormalised
        cdf = xp.cumsum(weights, axis=1)  # (M, V)
        u = generator.random(logits.shape[0]) * cdf[:, -1]  # (M,) in [0, total)
        ids = (cdf <= u[:, None]).sum(axis=1)  # (M,)
        # u rounding up onto the total (≈ 2⁻⁵³ per row) would point past the end
        return xp.minimum(ids, self.last_samplable_id)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        labels=None,
        original_ids=None,
        generator=None,
    ) -> ElectraOutput:
        """BERT's arguments in BERT's order, then ELECTRA's own. ``input_ids`` (B, S) with
        masks, ``labels`` (B, S) (original id where masked, -100 elsewhere), so a collator's
        batch goes in as ``model(**batch)``. ``original_ids`` defaults to the labels where
        masked and the input elsewhere (what an MLM collator leaves untouched). ``generator``
        draws the samples."""
        if labels is None:
            raise ValueError(
                "ELECTRA pretraining needs labels: the original ids of the masked "
                "positions, -100 elsewhere (as MLMCollator returns them)"
            )
        like = self.discriminator.embeddings.word_embeddings.weight.data
        xp = backend.get_array_module(like)
        input_ids = backend.asarray_on(raw(input_ids), like, np.int64)
        labels = backend.asarray_on(raw(labels), like, np.int64)
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {labels.shape} and input_ids {input_ids.shape} differ")
        masked = labels != -100  # (B, S)
        if original_ids is None:
            original_ids = xp.where(masked, labels, input_ids)  # (B, S)
        original_ids = backend.asarray_on(raw(original_ids), like, np.int64)
        if attention_mask is None:
            attention_mask = xp.ones(input_ids.shape, dtype=np.int64)
        attention_mask = backend.asarray_on(raw(attention_mask), like, np.int64)
        if token_type_ids is None:
            token_type_ids = xp.zeros(input_ids.shape, dtype=np.int64)
        token_type_ids = backend.asarray_on(raw(token_type_ids), like, np.int64)

        # 1. the generator: MLM on the masked positions, then one sample for each
        predicted = xp.flatnonzero(masked.reshape(-1))  # (M,) row-major
        generator_logits = self.generator(input_ids, attention_mask, token_type_ids, predicted)
        mlm_loss = F.cross_entropy(generator_logits, labels.reshape(-1)[predicted])
        sampled = self.sample(generator_logits.data, generator)  # (M,) ints: no gradient
        corrupted = original_ids.copy().reshape(-1)  # (B·S,)
        corrupted[predicted] = sampled
        corrupted = corrupted.reshape(input_ids.shape)  # (B, S)

        # 2. the discriminator: original (0) or replaced (1), for every real token
        real = attention_mask != 0  # (B, S)
        replaced = corrupted != original_ids  # (B, S)
        hidden = self.discriminator(corrupted, attention_mask, token_type_ids).last_hidden_state
        logits = self.discriminator_predictions(hidden)  # (B, S)
        rtd_loss = binary_cross_entropy_with_logits(logits, replaced, real)
        right = ((logits.data > 0) == replaced) & real  # (B, S)
        rtd_accuracy = right.sum() / xp.maximum(real.sum(), 1)
        return ElectraOutput(
            loss=mlm_loss + rtd_loss * self.rtd_weight,
            mlm_loss=mlm_loss,
            rtd_loss=rtd_loss,
            rtd_accuracy=rtd_accuracy,
            generator_logits=generator_logits,
            discriminator_logits=logits,
            corrupted_ids=corrupted,
            rtd_labels=xp.where(real, replaced.astype(np.int64), -100),
        )

    # --- saving and loading -------------------------------------------------------------------

    def save_discriminator(self, path) -> None:
        """The discriminator as a Hugging Face BertModel folder (config.json, model.safetensors):
        the encoder to fine-tune, loadable by ``BertModel.from_pretrained`` here and in
        ``transformers``."""
        self.discriminator.save_pretrained(path)

    def save_pretrained(self, path) -> None:
        """The discriminator folder plus ``electra.safetensors``: the generator and the
        discriminator's head (with the generator's config and λ in its metadata)."""
        from safetensors.numpy import save

        from tinymlm.fileio import atomic_write_bytes

        self.save_discriminator(path)
        rest = {n: v for n, v in self.state_dict().items() if not n.startswith("discriminator.")}
        # One metadata entry: safetensors keeps metadata in a hash map, so two entries may be
        # written in either order and two saves of one model would differ in their bytes.
        settings = {
            "generator_config": self.generator.config.to_dict(),
            "rtd_weight": self.rtd_weight,
        }
        metadata = {"electra": json.dumps(settings, sort_keys=True)}
        atomic_write_bytes(Path(path) / HEADS_FILE, save(rest, metadata=metadata))

    @classmethod
    def from_pretrained(cls, path, dtype=None, device: str = "cpu", special_token_ids=()):
        """Load what ``save_pretrained`` wrote (the trainer's checkpoints)."""
        from safetensors import SafetensorError, safe_open

        from tinymlm.checkpoint import CheckpointError

        path = Path(path)
        discriminator = BertModel.from_pretrained(path, dtype=dtype)
        try:
            with safe_open(path / HEADS_FILE, framework="numpy") as f:
                metadata = f.metadata() or {}
                rest = {name: f.get_tensor(name) for name in f.keys()}
            settings = json.loads(metadata["electra"])
            generator = BertConfig.from_dict(settings["generator_config"])
            rtd_weight = float(settings["rtd_weight"])
        except (OSError, KeyError, ValueError, SafetensorError) as e:
            raise CheckpointError(
                f"{path / HEADS_FILE} is missing or damaged ({e}); it holds "
                "the ELECTRA generator: restore it or start a new run"
            ) from e
        model = cls(discriminator.config, generator, special_token_ids, rtd_weight)
        model.to(discriminator.dtype)
        state = {f"discriminator.{n}": v for n, v in discriminator.state_dict().items()}
        model.load_state_dict({**state, **rest}, strict=True)
        model.to(device)
        model.eval()
        return model

