"""tinymlm's BertForMaskedLM against Hugging Face's, weight for weight (issue 3).

One random transformers model (small config, every weight — biases and LayerNorms included —
drawn at random so that no term of the forward pass is trivially 0 or 1) is saved and loaded
into tinymlm. On a batch with padding and two segments, the logits, the loss and the gradient
of every parameter must agree: to 1e-9 relative in float64, 2e-5 in float32.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from parity import assert_gradients_close  # noqa: E402

from tinymlm.nn.bert import BertForMaskedLM  # noqa: E402

HF_CONFIG = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A float64 transformers BertForMaskedLM with every weight random, saved to a folder."""
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(transformers.BertConfig(**HF_CONFIG)).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.uniform_(0.5, 1.5)
            else:  # biases too (they start at 0), so a missing bias would show
                p.normal_(0.0, 0.3)
    folder = tmp_path_factory.mktemp("hf_mlm")
    model.save_pretrained(folder)
    return folder


def make_batch():
    """Three rows of 10: padding on rows 0 and 1, two segments on row 2, 7 predicted tokens."""
    rng = np.random.default_rng(0)
    B, S = 3, 10
    ids = rng.integers(1, HF_CONFIG["vocab_size"], size=(B, S))
    mask = np.ones((B, S), dtype=np.int64)
    mask[0, 6:] = 0
    mask[1, 9:] = 0
    ids[mask == 0] = 0  # [PAD]
    types = np.zeros((B, S), dtype=np.int64)
    types[2, 4:] = 1
    labels = np.full((B, S), -100, dtype=np.int64)
    for b, s in [(0, 1), (0, 4), (1, 0), (1, 7), (2, 2), (2, 5), (2, 9)]:
        labels[b, s] = rng.integers(0, HF_CONFIG["vocab_size"])
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)


@pytest.fixture(scope="module")
def batch():
    return make_batch()


def hf_model(folder, torch_dtype):
    model = transformers.BertForMaskedLM.from_pretrained(folder).to(torch_dtype)
    return model.train()  # dropout is 0: train mode only checks that nothing else changes


def run_hf(model, batch, with_labels=True):
    inputs = {k: torch.tensor(v) for k, v in batch.items() if with_labels or k != "labels"}
    out = model(**inputs)
    if with_labels:
        out.loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def run_ours(model, batch, with_labels=True):
    labels = batch["labels"] if with_labels else None
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], labels)
    logits = out.logits.numpy()  # read before backward(): a fused loss may reuse the buffer
    if with_labels:
        out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return logits, out.loss, grads


@pytest.mark.parametrize(
    "np_dtype, torch_dtype, rtol",
    [(np.float64, torch.float64, 1e-9), (np.float32, torch.float32, 2e-5)],
    ids=["float64", "float32"],
)
def test_logits_loss_and_every_gradient_match_transformers(
    hf_folder, batch, np_dtype, torch_dtype, rtol
):
    theirs = hf_model(hf_folder, torch_dtype)
    hf_out, hf_grads = run_hf(theirs, batch)
    model = BertForMaskedLM.from_pretrained(hf_folder, dtype=np_dtype).train()
    logits, loss, grads = run_ours(model, batch)

    predicted = batch["labels"] != -100
    expected_logits = hf_out.logits.detach().numpy()[predicted]  # (M, V), row-major order
    assert logits.dtype == np_dtype and loss.dtype == np_dtype
    assert logits.shape == (int(predicted.sum()), HF_CONFIG["vocab_size"])
    np.testing.assert_allclose(logits, expected_logits, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(loss.item(), hf_out.loss.item(), rtol=rtol)
    assert_gradients_close(grads, hf_grads, rtol)


def test_logits_without_labels_are_the_full_batch(hf_folder, batch):
    theirs = hf_model(hf_folder, torch.float64)
    hf_out, _ = run_hf(theirs, batch, with_labels=False)
    model = BertForMaskedLM.from_pretrained(hf_folder)
    logits, loss, _ = run_ours(model, batch, with_labels=False)
    assert loss is None
    assert logits.shape == (3, 10, HF_CONFIG["vocab_size"])
    np.testing.assert_allclose(logits, hf_out.logits.detach().numpy(), rtol=1e-9, atol=1e-9)


def test_dense_prediction_gives_full_logits_and_the_same_loss_and_gradients(hf_folder, batch):
    sparse = BertForMaskedLM.from_pretrained(hf_folder)
    dense = BertForMaskedLM.from_pretrained(hf_folder)
    dense.sparse_prediction = False
    sparse_logits, sparse_loss, sparse_grads = run_ours(sparse, batch)
    dense_logits, dense_loss, dense_grads = run_ours(dense, batch)

    theirs = hf_model(hf_folder, torch.float64)
    hf_out, _ = run_hf(theirs, batch)
    assert dense_logits.shape == (3, 10, HF_CONFIG["vocab_size"])
    np.testing.assert_allclose(dense_logits, hf_out.logits.detach().numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dense_logits[batch["labels"] != -100], sparse_logits, rtol=1e-12)
    np.testing.assert_allclose(dense_loss.item(), sparse_loss.item(), rtol=1e-12)
    np.testing.assert_allclose(dense_loss.item(), hf_out.loss.item(), rtol=1e-9)
    assert_gradients_close(dense_grads, sparse_grads, 1e-10)


@pytest.mark.parametrize("sparse_prediction", [True, False], ids=["sparse", "dense"])
def test_no_predicted_token_gives_zero_loss_and_finite_gradients(
    hf_folder, batch, sparse_prediction
):
    """Hugging Face returns NaN here (transformers#16711); tinymlm returns exactly 0."""
    model = BertForMaskedLM.from_pretrained(hf_folder)
    model.sparse_prediction = sparse_prediction
    nothing = dict(batch, labels=np.full_like(batch["labels"], -100))
    logits, loss, grads = run_ours(model, nothing)
    assert loss.item() == 0.0
    if sparse_prediction:
        assert logits.shape == (0, HF_CONFIG["vocab_size"])
    for name, g in grads.items():
        if g is None:
            continue
        assert np.all(np.isfinite(g)), name
        assert not np.any(g), f"{name}: a loss that is constant 0 must have gradient 0"
    head = {n for n, g in grads.items() if n.startswith("cls.") and g is not None}
    assert head == {
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
    }, "the head's parameters get (zero) gradients, not None"
