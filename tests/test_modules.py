"""Modules and layers (issue 3): the Module API, BERT's parameter names, tying, modes,
state, dtypes, initialisation, and a float64 gradient check of every layer.

Gradient checks cost two forward passes per checked element, so the shapes are tiny
(hidden 8, 2 heads); the checked Parameters are passed to gradcheck as its inputs and the
closure runs the module, so gradcheck perturbs the very arrays the module reads.
"""

from __future__ import annotations

import numpy as np
import pytest

import tinymlm
from tinymlm.autograd import Tensor
from tinymlm.gradcheck import gradcheck
from tinymlm.nn import Dropout, Embedding, LayerNorm, Linear, ModuleList
from tinymlm.nn.bert import (
    BertConfig,
    BertEmbeddings,
    BertForMaskedLM,
    BertLayer,
    BertModel,
    BertSelfAttention,
)

GRADCHECK_TOL = 1e-6

TINY = dict(
    vocab_size=12,
    hidden_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=12,
    max_position_embeddings=6,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def tiny_config(**changes) -> BertConfig:
    return BertConfig(**{**TINY, **changes})


def randomize(module, seed=0):
    """float64 and every weight random (LayerNorm weights near 1), so no term is trivial."""
    module.to(np.float64)
    rng = np.random.default_rng(seed)
    for name, p in module.named_parameters():
        center = 1.0 if "LayerNorm.weight" in name else 0.0
        p.data = center + 0.5 * rng.standard_normal(p.shape)
    return module


def tiny_batch(seed=0):
    """Two rows of 5: row 1 has 2 padding positions, row 0 two segments."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, TINY["vocab_size"], size=(2, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    types = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
    return ids, mask, types


def assert_gradcheck(fn, inputs):
    # eps 1e-5 rather than gradcheck's 1e-6: through a whole layer the loss sums many O(1)
    # terms, and the rounding error of a central difference (~ulp(L)/eps) reaches 1e-9 at
    # eps 1e-6, while the truncation error (~eps²) stays far below the tolerance at 1e-5.
    result = gradcheck(fn, inputs, eps=1e-5)
    assert result.ok and result.max_error <= GRADCHECK_TOL, str(result)


def checkable(module):
    """The module's parameters except the attention key bias.

    The key bias's gradient is exactly 0 in exact arithmetic: it adds q·b_k, the same number,
    to every score of a query row, and softmax ignores a shift of its row. A finite
    difference of 0 is pure rounding noise (~1e-9 here) that no relative test can judge, so
    the key bias is checked apart (``test_attention_key_bias_gets_no_gradient``).
    """
    return [p for n, p in module.named_parameters() if not n.endswith("key.bias")]


# --- gradient checks of every layer ---------------------------------------------------------------


def test_gradcheck_linear_layernorm_embedding_layers():
    tinymlm.manual_seed(0)
    rng = np.random.default_rng(0)
    linear = randomize(Linear(4, 3))
    x = Tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
    assert_gradcheck(lambda x, *_: linear(x), [x, linear.weight, linear.bias])

    norm = randomize(LayerNorm(4, eps=1e-12))
    assert_gradcheck(lambda x, *_: norm(x), [x, norm.weight, norm.bias])

    table = randomize(Embedding(5, 3))
    ids = np.array([[0, 4, 4], [2, 0, 1]])  # repeated ids: their gradients must add up
    assert_gradcheck(lambda w: table(ids), [table.weight])


def test_gradcheck_bert_embeddings_with_token_types():
    emb = randomize(BertEmbeddings(tiny_config()))
    ids, _, types = tiny_batch()
    assert_gradcheck(lambda *_: emb(ids, types), checkable(emb))


def test_gradcheck_self_attention_with_padding_mask():
    attention = randomize(BertSelfAttention(tiny_config()))
    _, mask, _ = tiny_batch()
    x = Tensor(np.random.default_rng(1).standard_normal((2, 5, 8)), requires_grad=True)
    assert_gradcheck(lambda x, *_: attention(x, mask), [x, *checkable(attention)])


def test_attention_key_bias_gets_no_gradient():
    attention = randomize(BertSelfAttention(tiny_config()))
    _, mask, _ = tiny_batch()
    x = Tensor(np.random.default_rng(1).standard_normal((2, 5, 8)))
    weights = np.random.default_rng(2).standard_normal((2, 5, 8))
    (attention(x, mask) * weights).sum().backward()
    scale = np.abs(attention.key.weight.grad).max()
    assert scale > 1e-3
    assert np.abs(attention.key.bias.grad).max() < 1e-13 * scale


@pytest.mark.parametrize("pre_layer_norm", [False, True], ids=["post-LN", "pre-LN"])
def test_gradcheck_encoder_layer(pre_layer_norm):
    layer = randomize(BertLayer(tiny_config(pre_layer_norm=pre_layer_norm)))
    _, mask, _ = tiny_batch()
    x = Tensor(np.random.default_rng(2).standard_normal((2, 5, 8)), requires_grad=True)
    assert_gradcheck(lambda x, *_: layer(x, mask), [x, *checkable(layer)])


@pytest.mark.parametrize("sparse_prediction", [True, False], ids=["sparse", "dense"])
def test_gradcheck_mlm_loss_through_the_whole_model(sparse_prediction):
    """The tied word embeddings get gradient from both ends (lookup and decoder)."""
    model = randomize(BertForMaskedLM(tiny_config()))
    model.sparse_prediction = sparse_prediction
    ids, mask, types = tiny_batch()
    labels = np.full(ids.shape, -100)
    labels[0, 1], labels[0, 4], labels[1, 2] = 3, 7, 3
    named = dict(model.named_parameters())
    checked = [
        named["bert.embeddings.word_embeddings.weight"],
        named["cls.predictions.bias"],
        named["cls.predictions.transform.dense.weight"],
        named["cls.predictions.transform.LayerNorm.weight"],
        named["bert.encoder.layer.0.attention.self.query.weight"],
        named["bert.encoder.layer.1.output.dense.bias"],
    ]
    assert_gradcheck(lambda *_: model(ids, mask, types, labels).loss, checked)


def test_gradcheck_pre_ln_model_final_layer_norm():
    model = randomize(BertForMaskedLM(tiny_config(pre_layer_norm=True, num_hidden_layers=1)))
    ids, mask, types = tiny_batch()
    named = dict(model.named_parameters())
    checked = [named["bert.encoder.LayerNorm.weight"], named["bert.encoder.LayerNorm.bias"]]
    assert_gradcheck(lambda *_: model(ids, mask, types).logits, checked)


# --- names ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


def _hf_config(transformers):
    return transformers.BertConfig(**TINY)


HF_BUFFERS_AND_TIES = {
    "bert.embeddings.position_ids",
    "embeddings.position_ids",
    "bert.embeddings.token_type_ids",
    "embeddings.token_type_ids",
    "cls.predictions.decoder.weight",  # tied to the word embeddings
    "cls.predictions.decoder.bias",  # the same tensor as cls.predictions.bias
}


def test_parameter_names_are_hugging_faces(transformers):
    theirs = transformers.BertForMaskedLM(_hf_config(transformers))
    ours = BertForMaskedLM(tiny_config())
    names = [n for n, _ in ours.named_parameters()]
    assert len(names) == len(set(names))
    assert set(names) == set(theirs.state_dict()) - HF_BUFFERS_AND_TIES
    assert names == [n for n, _ in theirs.named_parameters()], "and in the same order"
    assert ours.num_parameters() == theirs.num_parameters()
    for name, p in theirs.named_parameters():
        assert dict(ours.named_parameters())[name].shape == tuple(p.shape), name


def test_encoder_names_are_hugging_faces(transformers):
    theirs = transformers.BertModel(_hf_config(transformers), add_pooling_layer=False)
    ours = BertModel(tiny_config())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    pooled = BertModel(tiny_config(), add_pooling_layer=True)
    hf_pooled = transformers.BertModel(_hf_config(transformers))
    assert {n for n, _ in pooled.named_parameters()} == set(hf_pooled.state_dict()) - (
        HF_BUFFERS_AND_TIES
    )


def test_pre_ln_adds_only_the_final_layer_norm():
    post = {n for n, _ in BertForMaskedLM(tiny_config()).named_parameters()}
    pre = {n for n, _ in BertForMaskedLM(tiny_config(pre_layer_norm=True)).named_parameters()}
    assert pre - post == {"bert.encoder.LayerNorm.weight", "bert.encoder.LayerNorm.bias"}
    assert post <= pre


# --- tying ----------------------------------------------------------------------------------------


def test_decoder_is_tied_to_the_word_embeddings():
    model = randomize(BertForMaskedLM(tiny_config()))
    words = model.bert.embeddings.word_embeddings.weight
    assert sum(p is words for p in model.parameters()) == 1, "the tied matrix appears once"
    assert not any("decoder" in n for n, _ in model.named_parameters())

    model.eval()
    ids, mask, types = tiny_batch()
    hidden = model.bert(ids, mask, types).last_hidden_state
    before = model.cls.predictions(hidden).numpy()  # the head alone, on fixed hidden states
    words.data[5] += 1.0  # only the decoder row of token 5 changes for the head
    after = model.cls.predictions(hidden).numpy()
    changed = np.any(before != after, axis=(0, 1))
    assert changed[5] and changed.sum() == 1, "editing the embedding edits the decoder"


def test_tied_weight_gradient_is_the_sum_of_both_uses():
    model = randomize(BertForMaskedLM(tiny_config()))
    ids, mask, types = tiny_batch()
    words = model.bert.embeddings.word_embeddings.weight
    model(ids, mask, types).logits.sum().backward()
    total = words.grad.copy()

    # the decoder's share: the head on hidden states cut off from the lookup
    model.zero_grad()
    hidden = Tensor(model.bert(ids, mask, types).last_hidden_state.data, requires_grad=True)
    model.cls.predictions(hidden).sum().backward()
    decoder_part, hidden_grad = words.grad.copy(), hidden.grad

    # the lookup's share: the encoder alone, fed the gradient the head sends back
    model.zero_grad()
    model.bert(ids, mask, types).last_hidden_state.backward(hidden_grad)
    lookup_part = words.grad.copy()

    assert np.any(decoder_part) and np.any(lookup_part)
    np.testing.assert_allclose(total, decoder_part + lookup_part, rtol=1e-10, atol=1e-12)


# --- modes, state, dtypes -------------------------------------------------------------------------


def test_train_and_eval_toggle_dropout_everywhere():
    tinymlm.manual_seed(0)
    model = BertForMaskedLM(tiny_config(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3))
    ids, mask, types = tiny_batch()
    assert model.training
    assert model.train() is model
    a = model(ids, mask, types).logits.numpy()
    b = model(ids, mask, types).logits.numpy()
    assert not np.array_equal(a, b), "training mode draws new dropout masks"

    assert model.eval() is model
    assert not any(m.training for _, m in model.named_modules())
    c = model(ids, mask, types).logits.numpy()
    d = model(ids, mask, types).logits.numpy()
    np.testing.assert_array_equal(c, d)
    # eval equals the same weights with dropout switched off
    plain = BertForMaskedLM(tiny_config())
    plain.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(plain(ids, mask, types).logits.numpy(), c)

    model.train()
    assert all(m.training for _, m in model.named_modules())


def test_dropout_module_follows_its_mode():
    drop = Dropout(0.5)
    x = np.ones((50, 20), dtype=np.float32)
    y = drop(x).numpy()
    assert set(np.unique(y)) <= {0.0, 2.0} and 0.3 < (y == 0).mean() < 0.7
    assert y.dtype == np.float32
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), x)


def test_state_dict_round_trip_and_errors():
    tinymlm.manual_seed(1)
    source = randomize(BertForMaskedLM(tiny_config()), seed=3)
    state = source.state_dict()
    assert list(state) == [n for n, _ in source.named_parameters()]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    state_copy = {k: v.copy() for k, v in state.items()}
    state["cls.predictions.bias"][:] = 99.0  # a copy: the model is untouched
    assert not np.any(source.cls.predictions.bias.data == 99.0)

    target = BertForMaskedLM(tiny_config())  # float32
    missing, unexpected = target.load_state_dict(state_copy)
    assert missing == [] and unexpected == []
    assert target.dtype == np.float32, "loading keeps each parameter's dtype"
    for name, p in target.named_parameters():
        np.testing.assert_array_equal(p.data, state_copy[name].astype(np.float32), err_msg=name)

    exact = BertForMaskedLM(tiny_config()).to(np.float64)
    exact.load_state_dict(state_copy)
    ids, mask, types = tiny_batch()
    np.testing.assert_array_equal(
        exact(ids, mask, types).logits.numpy(), source.eval()(ids, mask, types).logits.numpy()
    )

    partial = dict(state_copy)
    del partial["cls.predictions.bias"]
    partial["pooler.dense.weight"] = np.zeros((8, 8))
    with pytest.raises(KeyError, match="cls.predictions.bias"):
        target.load_state_dict(partial)
    missing, unexpected = target.load_state_dict(partial, strict=False)
    assert missing == ["cls.predictions.bias"] and unexpected == ["pooler.dense.weight"]
    bad = dict(state_copy, **{"cls.predictions.bias": np.zeros(5)})
    with pytest.raises(ValueError, match="cls.predictions.bias"):
        target.load_state_dict(bad)


def test_to_dtype_keeps_parameter_identity_and_clears_grads():
    model = BertForMaskedLM(tiny_config())
    params = model.parameters()
    assert {p.dtype for p in params} == {np.dtype(np.float32)}, "new parameters are float32"
    ids, mask, types = tiny_batch()
    model(ids, mask, types, np.where(mask == 1, 3, -100)).loss.backward()
    assert all(p.grad is not None for p in params)
    assert model.to(np.float64) is model
    assert all(p is q for p, q in zip(params, model.parameters()))
    assert {p.dtype for p in params} == {np.dtype(np.float64)}
    assert all(p.grad is None for p in params)
    assert model(ids, mask, types).logits.dtype == np.float64
    assert model.cls.predictions._decoder_weight is model.bert.embeddings.word_embeddings.weight
    model.to("cpu")
    assert model.device == "cpu"


def test_zero_grad_clears_every_gradient():
    model = BertForMaskedLM(tiny_config())
    ids, mask, types = tiny_batch()
    model(ids, mask, types, np.where(mask == 1, 3, -100)).loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_module_list_registers_its_items():
    layers = ModuleList([Linear(2, 3), Linear(3, 4, bias=False)])
    assert len(layers) == 2 and layers[1].bias is None
    assert [n for n, _ in layers.named_parameters()] == ["0.weight", "0.bias", "1.weight"]
    assert [type(m).__name__ for m in layers] == ["Linear", "Linear"]


# --- initialisation -------------------------------------------------------------------------------


def test_bert_initialisation_statistics():
    tinymlm.manual_seed(0)
    cfg = tiny_config(
        vocab_size=600,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
    )
    model = BertForMaskedLM(cfg)
    for name, p in model.named_parameters():
        data = p.data
        assert data.dtype == np.float32, name
        if "LayerNorm" in name:
            expected = 1.0 if name.endswith("weight") else 0.0
            assert np.all(data == expected), name
        elif name.endswith("bias"):
            assert not np.any(data), f"{name} must start at 0"
        else:
            values = data[1:] if name.endswith("word_embeddings.weight") else data
            # the sample std of n normal draws is within ~3/sqrt(2n) of the true one
            tol = 4 / np.sqrt(2 * values.size) + 1e-3
            assert values.std() == pytest.approx(cfg.initializer_range, rel=tol), name
            assert abs(values.mean()) < 4 * cfg.initializer_range / np.sqrt(values.size), name
    words = model.bert.embeddings.word_embeddings.weight.data
    assert not np.any(words[cfg.pad_token_id]), "the padding row starts at 0"


def test_initialisation_is_reproducible_from_the_seed():
    tinymlm.manual_seed(7)
    a = BertForMaskedLM(tiny_config()).state_dict()
    tinymlm.manual_seed(7)
    b = BertForMaskedLM(tiny_config()).state_dict()
    tinymlm.manual_seed(8)
    c = BertForMaskedLM(tiny_config()).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(
        a["cls.predictions.transform.dense.weight"], c["cls.predictions.transform.dense.weight"]
    )


def test_config_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="multiple"):
        BertConfig(hidden_size=10, num_attention_heads=4)
    with pytest.raises(ValueError, match="gelu"):
        BertConfig(hidden_act="relu")
    cfg = BertConfig.from_dict({**TINY, "use_cache": True})
    assert cfg.extra == {"use_cache": True}
    assert cfg.to_dict()["use_cache"] is True
