"""BertLMHeadModel against Hugging Face's, weight for weight (issue 19), and causality.

One random transformers ``BertLMHeadModel`` (is_decoder=True, every weight random) is saved and
loaded here. On a padded batch the logits, the shifted next-token loss and every gradient agree
to 1e-9 in float64. transformers' own ``out.loss`` casts the logits to float32 first
(``ForCausalLMLoss``: ``logits.float()``), so it is compared at float32's precision, and the
float64 comparison uses its formula in float64: cross_entropy(logits[:, :-1], labels[:, 1:]).

Without torch: the model still saves and loads, and no position's output changes when a later
token changes (fused and reference attention).
"""

from __future__ import annotations

import numpy as np
import pytest

from tinymlm import BertConfig, BertForMaskedLM, BertLMHeadModel
from tinymlm.kernels import use_kernels

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


def make_batch():
    """Three rows of 10, right-padded as the tokenizer pads; labels = ids, -100 on padding,
    and one real position ignored too."""
    rng = np.random.default_rng(0)
    B, S = 3, 10
    ids = rng.integers(1, HF_CONFIG["vocab_size"], size=(B, S))
    mask = np.ones((B, S), dtype=np.int64)
    mask[0, 6:] = 0
    mask[1, 9:] = 0
    ids[mask == 0] = 0  # [PAD]
    types = np.zeros((B, S), dtype=np.int64)
    types[2, 4:] = 1
    labels = np.where(mask == 1, ids, -100)
    labels[2, 3] = -100
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)


def tiny_model(dtype=np.float64):
    return BertLMHeadModel(BertConfig(**HF_CONFIG)).to(dtype)


def test_is_decoder_is_forced_on_a_copy_of_the_config():
    config = BertConfig(**HF_CONFIG)
    model = BertLMHeadModel(config)
    assert model.config.is_decoder and not config.is_decoder
    assert all(layer.attention.self.is_causal for layer in model.bert.encoder.layer)
    assert not BertForMaskedLM(config).bert.encoder.layer[0].attention.self.is_causal


def test_logits_are_the_full_batch_with_or_without_labels():
    model = tiny_model()
    batch = make_batch()
    with_labels = model(**batch)
    without = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert with_labels.logits.shape == (3, 10, HF_CONFIG["vocab_size"])
    np.testing.assert_array_equal(with_labels.logits.numpy(), without.logits.numpy())
    assert without.loss is None


def test_loss_is_the_next_token_cross_entropy():
    model = tiny_model()
    batch = make_batch()
    out = model(**batch)
    logits = out.logits.numpy()[:, :-1]  # (B, S-1, V)
    targets = batch["labels"][:, 1:]  # (B, S-1)
    log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    counted = targets != -100
    expected = -np.take_along_axis(log_p, np.where(counted, targets, 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.loss.item(), expected[counted].mean(), rtol=1e-12)
    # the loss-only path (the trainer's: fused output layer + loss) gives the same number
    np.testing.assert_allclose(model(**batch, return_logits=False).loss.item(), out.loss.item(),
                               rtol=1e-12)


@pytest.mark.parametrize("mode", ["reference", "numba"])
def test_no_position_changes_when_a_later_token_changes(mode):
    model = tiny_model()
    rng = np.random.default_rng(1)
    ids = rng.integers(1, HF_CONFIG["vocab_size"], size=(2, 8))
    with use_kernels(mode):
        before = model(ids).logits.numpy()  # (B, S, V)
        for t in range(7):
            changed = ids.copy()
            changed[:, t + 1:] = rng.integers(1, HF_CONFIG["vocab_size"], size=(2, 7 - t))
            after = model(changed).logits.numpy()
            np.testing.assert_array_equal(after[:, : t + 1], before[:, : t + 1])
            assert not np.allclose(after[:, t + 1:], before[:, t + 1:])


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = BertLMHeadModel.from_pretrained(tmp_path)
    assert loaded.config.is_decoder
    batch = make_batch()
    np.testing.assert_array_equal(loaded(**batch).logits.numpy(), model(**batch).logits.numpy())


# --- against transformers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_folder(torch, transformers, tmp_path_factory):
    """A float64 transformers BertLMHeadModel (is_decoder) with every weight random, saved."""
    torch.manual_seed(0)
    config = transformers.BertConfig(**HF_CONFIG, is_decoder=True)
    model = transformers.BertLMHeadModel(config).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.uniform_(0.5, 1.5)
            else:  # biases too (they start at 0), so a missing bias would show
                p.normal_(0.0, 0.3)
    folder = tmp_path_factory.mktemp("hf_clm")
    model.save_pretrained(folder)
    return folder


def run_hf(torch, transformers, folder, batch):
    model = transformers.BertLMHeadModel.from_pretrained(
        folder, attn_implementation="eager").double().train()  # dropout 0
    inputs = {k: torch.tensor(v) for k, v in batch.items()}
    out = model(**inputs)
    V = out.logits.shape[-1]
    # transformers' loss formula, kept in float64 (its out.loss is computed in float32)
    loss = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, V), inputs["labels"][:, 1:].reshape(-1), ignore_index=-100
    )
    loss.backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    return out, loss, grads


@pytest.mark.parametrize("mode", ["reference", "numba"])
def test_logits_loss_and_every_gradient_match_transformers(torch, transformers, hf_folder, mode):
    from parity import assert_gradients_close

    batch = make_batch()
    hf_out, hf_loss, hf_grads = run_hf(torch, transformers, hf_folder, batch)
    model = BertLMHeadModel.from_pretrained(hf_folder, dtype=np.float64).train()
    with use_kernels(mode):
        out = model(**batch)
        logits = out.logits.numpy()
        out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    np.testing.assert_allclose(logits, hf_out.logits.detach().numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out.loss.item(), hf_loss.item(), rtol=1e-9)
    np.testing.assert_allclose(out.loss.item(), hf_out.loss.item(), rtol=1e-6)  # float32 there
    assert_gradients_close(grads, hf_grads, 1e-9)


def test_folders_load_both_ways(torch, transformers, hf_folder, tmp_path):
    """Ours -> transformers: the same logits (the folder says BertLMHeadModel, is_decoder)."""
    model = BertLMHeadModel.from_pretrained(hf_folder, dtype=np.float64)
    model.save_pretrained(tmp_path)
    theirs = transformers.BertLMHeadModel.from_pretrained(
        tmp_path, attn_implementation="eager").double().eval()
    assert theirs.config.is_decoder
    batch = make_batch()
    with torch.no_grad():
        expected = theirs(**{k: torch.tensor(v) for k, v in batch.items()
                             if k != "labels"}).logits.numpy()
    got = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)
