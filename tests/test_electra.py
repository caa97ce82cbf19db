"""ELECTRA pretraining (issue 8): the sigmoid cross-entropy, the discriminator head, the whole
loss (gradient checks in float64), the generator's sampling (seeded, never a special token),
the replaced-token labels, and the discriminator saved as a Hugging Face BERT encoder.

The end-to-end run, its byte-for-byte resume and the fine-tuning of its discriminator are in
test_train_resume.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tinymlm import backend, kernels
from tinymlm import train as train_module
from tinymlm.autograd import Tensor, no_grad
from tinymlm.gradcheck import gradcheck
from tinymlm.nn.bert import BertConfig, BertModel
from tinymlm.nn.electra import (
    ElectraDiscriminatorPredictions,
    ElectraForPretraining,
    binary_cross_entropy_with_logits,
    generator_config,
)

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = (PAD, UNK, CLS, SEP, MASK)
VOCAB = 24
TINY = BertConfig(
    vocab_size=VOCAB,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def tiny_model(dtype=np.float64, seed=0, size=0.5) -> ElectraForPretraining:
    backend.manual_seed(seed)
    model = ElectraForPretraining(TINY, generator_config(TINY, size), SPECIAL)
    return model.to(dtype)


def tiny_batch(seed=0):
    """Two rows: [CLS] words [SEP] then padding; about half the words masked (80/10/10 style)."""
    rng = np.random.default_rng(seed)
    original = np.full((2, 8), PAD, dtype=np.int64)
    original[0, :8] = [CLS, *rng.integers(5, VOCAB, 6), SEP]
    original[1, :5] = [CLS, *rng.integers(5, VOCAB, 3), SEP]
    mask = (original != PAD).astype(np.int64)  # (2, 8)
    words = original >= 5
    selected = words & (rng.random(original.shape) < 0.5)
    selected[0, 1] = selected[1, 2] = True  # at least one per row
    labels = np.where(selected, original, -100)
    masked = original.copy()
    masked[selected] = MASK
    masked[0, 1] = original[0, 1]  # one selected position kept as it was (the 10% rule)
    return masked, mask, labels, original


# --- the sigmoid cross-entropy ------------------------------------------------------------------


def reference_bce(x, y, counted):
    """−y log σ(x) − (1 − y) log(1 − σ(x)), averaged over counted elements, in plain math."""
    total, n = 0.0, 0
    for xi, yi, ci in zip(x.ravel(), y.ravel(), counted.ravel()):
        if ci:
            s = 1 / (1 + math.exp(-xi))
            total += -(yi * math.log(s) + (1 - yi) * math.log(1 - s))
            n += 1
    return total / max(n, 1)


def test_bce_with_logits_value_and_gradient(rng):
    x = rng.standard_normal((3, 5)) * 3
    y = rng.random((3, 5)) < 0.4
    counted = rng.random((3, 5)) < 0.7
    loss = binary_cross_entropy_with_logits(Tensor(x), y, counted)
    assert loss.item() == pytest.approx(reference_bce(x, y, counted), rel=1e-12)
    result = gradcheck(
        lambda t: binary_cross_entropy_with_logits(t, y, counted), [Tensor(x, requires_grad=True)]
    )
    assert result.ok, str(result)


def test_bce_with_logits_gradient_is_zero_off_the_counted_elements(rng):
    x = Tensor(rng.standard_normal((2, 4)), requires_grad=True)
    counted = np.array([[1, 1, 0, 0], [0, 1, 1, 1]], dtype=bool)
    binary_cross_entropy_with_logits(x, np.ones((2, 4), dtype=bool), counted).backward()
    assert np.all(x.grad[~counted] == 0)
    sigmoid = 1 / (1 + np.exp(-x.data))
    np.testing.assert_allclose(x.grad[counted], (sigmoid[counted] - 1) / counted.sum(), rtol=1e-12)


def test_bce_with_logits_is_stable_for_large_logits_and_keeps_float32():
    x = Tensor(np.array([-200.0, -30.0, 30.0, 200.0], dtype=np.float32), requires_grad=True)
    y = np.array([0, 1, 0, 1])
    loss = binary_cross_entropy_with_logits(x, y)
    assert loss.dtype == np.float32
    # ℓ = |x| for the two confident wrong answers, ~0 for the right ones: (30 + 30) / 4
    assert loss.item() == pytest.approx(15.0, rel=1e-6)
    loss.backward()
    assert x.grad.dtype == np.float32 and np.all(np.isfinite(x.grad))
    np.testing.assert_allclose(x.grad, [0, -0.25, 0.25, 0], atol=1e-7)


def test_bce_with_logits_nothing_counted_is_zero_and_bad_shapes_raise():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    loss = binary_cross_entropy_with_logits(x, np.ones((2, 3)), np.zeros((2, 3), dtype=bool))
    loss.backward()
    assert loss.item() == 0.0 and not x.grad.any()
    with pytest.raises(ValueError, match="same shape"):
        binary_cross_entropy_with_logits(x, np.ones((3, 2)))


def test_bce_with_logits_matches_torch(rng, torch):
    x = rng.standard_normal((4, 6)) * 4
    y = (rng.random((4, 6)) < 0.5).astype(np.float64)
    ours = Tensor(x, requires_grad=True)
    binary_cross_entropy_with_logits(ours, y).backward()
    theirs = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(theirs, torch.tensor(y))
    expected.backward()
    np.testing.assert_allclose(
        binary_cross_entropy_with_logits(Tensor(x), y).item(), expected.item(), rtol=1e-13
    )
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-12)


# --- the discriminator head ---------------------------------------------------------------------


def test_discriminator_head_gradcheck_and_value(rng):
    backend.manual_seed(3)
    head = ElectraDiscriminatorPredictions(TINY).to(np.float64)
    for p in head.parameters():
        p.data = rng.standard_normal(p.shape) * 0.5
    hidden = Tensor(rng.standard_normal((2, 3, 16)), requires_grad=True)
    inputs = [
        hidden,
        head.dense.weight,
        head.dense.bias,
        head.dense_prediction.weight,
        head.dense_prediction.bias,
    ]
    result = gradcheck(lambda *_: head(hidden), inputs)
    assert result.ok, str(result)

    a = hidden.data @ head.dense.weight.data.T + head.dense.bias.data  # (2, 3, 16)
    gelu = a * 0.5 * (1 + np.vectorize(math.erf)(a / math.sqrt(2)))
    expected = (gelu @ head.dense_prediction.weight.data.T)[
        ..., 0
    ] + head.dense_prediction.bias.data
    np.testing.assert_allclose(head(hidden).data, expected, rtol=1e-12)
    assert head(hidden).shape == (2, 3)


# --- the whole loss -----------------------------------------------------------------------------


def test_electra_loss_gradcheck_through_generator_discriminator_and_shared_embeddings():
    model = tiny_model(np.float64)
    masked, mask, labels, original = tiny_batch()
    watched = [
        model.discriminator.embeddings.word_embeddings.weight,  # shared: MLM (tied) and RTD
        model.generator.generator_predictions.dense.weight,  # MLM only
        model.generator.encoder.layer[0].attention.self.query.weight,
        model.discriminator_predictions.dense_prediction.weight,  # RTD only
    ]

    def loss(*_):
        # a fresh generator with one seed: the same samples at every perturbation
        return model(masked, mask, labels=labels, generator=np.random.default_rng(11)).loss

    with kernels.use_kernels("reference"):
        out = model(masked, mask, labels=labels, generator=np.random.default_rng(11))
        assert 0 < out.rtd_labels[out.rtd_labels != -100].sum() < mask.sum()  # both kinds
        result = gradcheck(loss, watched)
    assert result.ok, str(result)


def test_loss_is_mlm_plus_weighted_rtd_and_each_part_matches_its_reference():
    model = tiny_model(np.float64)
    masked, mask, labels, original = tiny_batch()
    out = model(masked, mask, labels=labels, generator=np.random.default_rng(0))
    assert out.loss.item() == pytest.approx(
        out.mlm_loss.item() + 50 * out.rtd_loss.item(), rel=1e-14
    )
    targets = labels[labels != -100]
    z = out.generator_logits.data  # (M, V) in row-major order of the masked positions
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    assert out.mlm_loss.item() == pytest.approx(
        np.mean(lse - z[np.arange(len(z)), targets]), rel=1e-12
    )
    rtd_logits = out.discriminator_logits.data
    assert out.rtd_loss.item() == pytest.approx(
        reference_bce(rtd_logits, out.rtd_labels == 1, mask == 1), rel=1e-12
    )
    real = mask == 1
    accuracy = np.mean((rtd_logits[real] > 0) == (out.rtd_labels[real] == 1))
    assert float(out.rtd_accuracy) == pytest.approx(accuracy)


def test_rtd_labels_are_exactly_replaced_on_real_tokens_and_ignored_on_padding():
    model = tiny_model(np.float32)
    masked, mask, labels, original = tiny_batch()
    # Make the generator all but certain of token 7 everywhere: where the original is 7 the
    # sample equals it, and such a position must count as original.
    model.generator.generator_lm_head_bias.data[7] = 60.0
    masked_pos = labels != -100
    labels[0, 1] = original[0, 1] = 7
    out = model(masked, mask, labels=labels, generator=np.random.default_rng(0))
    corrupted = out.corrupted_ids
    np.testing.assert_array_equal(corrupted[~masked_pos], original[~masked_pos])
    np.testing.assert_array_equal(corrupted[masked_pos], 7)
    expected = np.where(mask == 1, (corrupted != original).astype(np.int64), -100)
    np.testing.assert_array_equal(out.rtd_labels, expected)
    assert out.rtd_labels[0, 1] == 0 and (out.rtd_labels[mask == 0] == -100).all()


def test_mask_and_special_tokens_never_reach_the_discriminator():
    model = tiny_model(np.float32)
    masked, mask, labels, original = tiny_batch()
    seen = []
    real_forward = model.discriminator.forward
    model.discriminator.forward = lambda ids, *a: (
        seen.append(np.array(ids)) or real_forward(ids, *a)
    )
    for favourite in SPECIAL:  # the generator begs for a special token: it is never sampled
        model.generator.generator_lm_head_bias.data[:] = 0
        model.generator.generator_lm_head_bias.data[favourite] = 80.0
        out = model(masked, mask, labels=labels, generator=np.random.default_rng(favourite))
        sampled = out.corrupted_ids[labels != -100]
        assert not np.isin(sampled, SPECIAL).any()
    assert len(seen) == len(SPECIAL)
    assert all(not (ids == MASK).any() for ids in seen)
    assert (masked == MASK).any()  # while the generator did read [MASK]s


def test_sampling_follows_the_softmax_over_ordinary_tokens():
    model = tiny_model(np.float32)
    logits = np.zeros((1, VOCAB), dtype=np.float32)
    logits[0, 5:9] = [2.0, 1.0, 0.0, -1.0]
    logits[0, MASK] = 5.0  # the most likely token, but special
    rows = 20000
    ids = model.sample(np.repeat(logits, rows, axis=0), np.random.default_rng(1))
    ordinary = np.setdiff1d(np.arange(VOCAB), SPECIAL)
    p = np.exp(logits[0, ordinary]) / np.exp(logits[0, ordinary]).sum()
    counts = np.bincount(ids, minlength=VOCAB)[ordinary]
    assert counts.sum() == rows and not np.isin(ids, SPECIAL).any()
    sigma = np.sqrt(rows * p * (1 - p))
    assert np.all(np.abs(counts - rows * p) < 5 * sigma)


def test_sampling_is_reproducible_under_the_seed_and_changes_with_it():
    model = tiny_model(np.float32)
    masked, mask, labels, _ = tiny_batch()

    def corrupted(seed):  # as the trainer does it: reseed the default generator per step
        backend.manual_seed(seed)
        with no_grad():
            return model(masked, mask, labels=labels).corrupted_ids

    np.testing.assert_array_equal(corrupted(5), corrupted(5))
    assert any((corrupted(5) != corrupted(s)).any() for s in (6, 7, 8))


def test_bad_inputs_raise_clear_errors():
    model = tiny_model(np.float32)
    masked, mask, labels, _ = tiny_batch()
    with pytest.raises(ValueError, match="needs labels"):
        model(masked, mask)
    with pytest.raises(ValueError, match="differ"):
        model(masked, mask, labels=labels[:, :4])
    with pytest.raises(ValueError, match="fraction"):
        generator_config(TINY, 0.0)
    with pytest.raises(ValueError, match="fraction"):
        generator_config(TINY, 1.5)


def test_generator_config_scales_width_heads_and_ffn():
    base = BertConfig(vocab_size=50, hidden_size=256, num_attention_heads=4, intermediate_size=1024)
    small = generator_config(base, 0.25)
    assert (small.hidden_size, small.num_attention_heads, small.intermediate_size) == (64, 1, 256)
    assert small.num_hidden_layers == base.num_hidden_layers
    third = generator_config(base, 1 / 3)
    assert third.hidden_size % third.num_attention_heads == 0
    assert abs(third.hidden_size - 256 / 3) <= third.num_attention_heads


# --- saving -------------------------------------------------------------------------------------


def test_saved_discriminator_is_a_bert_encoder_folder(tmp_path):
    model = tiny_model(np.float32, seed=4).eval()
    model.save_discriminator(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["model_type"] == "bert"
    masked, mask, _, _ = tiny_batch()
    loaded = BertModel.from_pretrained(tmp_path)
    with no_grad():
        expected = model.discriminator(masked, mask).last_hidden_state.data
        np.testing.assert_array_equal(loaded(masked, mask).last_hidden_state.data, expected)

    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    theirs = transformers.BertModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    with torch.no_grad():
        hidden = theirs(input_ids=torch.tensor(masked), attention_mask=torch.tensor(mask))
    np.testing.assert_allclose(hidden.last_hidden_state.numpy(), expected, atol=1e-5, rtol=1e-5)


def test_save_and_load_pretraining_model_round_trip(tmp_path):
    model = tiny_model(np.float32, seed=2)
    model.save_pretrained(tmp_path)
    loaded = ElectraForPretraining.from_pretrained(tmp_path)
    assert loaded.rtd_weight == model.rtd_weight
    assert loaded.generator.config == model.generator.config
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    # the tie survives loading: one embedding table feeds the generator and the discriminator
    assert loaded.generator._embeddings is loaded.discriminator.embeddings


def test_electra_matches_transformers_generator_and_discriminator():
    """Our generator and discriminator, loaded into Hugging Face's ElectraForMaskedLM and
    ElectraForPreTraining (embedding_size = the discriminator's width), give the same logits."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    model = tiny_model(np.float64, seed=6).eval()
    rng = np.random.default_rng(0)
    for p in model.parameters():  # every weight random, biases and LayerNorms included
        p.data = rng.standard_normal(p.shape) * 0.3 + (1.0 if p.ndim == 1 else 0.0)
    state = model.state_dict()
    g = model.generator.config
    common = dict(
        vocab_size=VOCAB,
        embedding_size=16,
        max_position_embeddings=16,
        num_hidden_layers=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=TINY.layer_norm_eps,
    )
    embeddings = {
        f"electra.embeddings.{n[len('discriminator.embeddings.') :]}": v
        for n, v in state.items()
        if n.startswith("discriminator.embeddings.")
    }

    disc = (
        transformers.ElectraForPreTraining(
            transformers.ElectraConfig(
                hidden_size=16, num_attention_heads=2, intermediate_size=32, **common
            )
        )
        .double()
        .eval()
    )
    disc_state = {**embeddings}
    for n, v in state.items():
        if n.startswith("discriminator.encoder."):
            disc_state["electra." + n[len("discriminator.") :]] = v
        elif n.startswith("discriminator_predictions."):
            disc_state[n] = v
    disc.load_state_dict({k: torch.tensor(v) for k, v in disc_state.items()}, strict=True)

    gen = (
        transformers.ElectraForMaskedLM(
            transformers.ElectraConfig(
                hidden_size=g.hidden_size,
                num_attention_heads=g.num_attention_heads,
                intermediate_size=g.intermediate_size,
                **common,
            )
        )
        .double()
        .eval()
    )
    gen_state = {
        **embeddings,
        "generator_lm_head.weight": state["discriminator.embeddings.word_embeddings.weight"],
        "generator_lm_head.bias": state["generator.generator_lm_head_bias"],
    }
    for n, v in state.items():
        if n.startswith(("generator.encoder.", "generator.embeddings_project.")):
            gen_state["electra." + n[len("generator.") :]] = v
        elif n.startswith("generator.generator_predictions."):
            gen_state[n[len("generator.") :]] = v
    gen.load_state_dict({k: torch.tensor(v) for k, v in gen_state.items()}, strict=True)

    masked, mask, labels, _ = tiny_batch()
    out = model(masked, mask, labels=labels, generator=np.random.default_rng(0))
    with torch.no_grad():
        gen_logits = gen(input_ids=torch.tensor(masked), attention_mask=torch.tensor(mask)).logits
        disc_logits = disc(
            input_ids=torch.tensor(out.corrupted_ids), attention_mask=torch.tensor(mask)
        ).logits
    np.testing.assert_allclose(
        out.generator_logits.data, gen_logits.numpy()[labels != -100], rtol=1e-10, atol=1e-10
    )
    np.testing.assert_allclose(
        out.discriminator_logits.data, disc_logits.numpy(), rtol=1e-10, atol=1e-10
    )


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objective", "electra", "--generator-size", "0"], "--generator-size"),
        (["--objective", "electra", "--generator-size", "1.5"], "--generator-size"),
        (["--objective", "electra", "--electra-weight", "-1"], "--electra-weight"),
        (["--generator-size", "0.5"], "electra only"),
        (["--electra-weight", "10"], "electra only"),
    ],
)
def test_bad_electra_options_exit_with_status_2(tmp_path, capsys, args, message):
    status = train_module.main([*args, "--out", str(tmp_path / "run")])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unknown_objective_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        train_module.main(["--objective", "gpt"])
    assert e.value.code == 2


def test_a_batch_without_masks_teaches_only_detection_and_float32_stays_float32():
    model = tiny_model(np.float32)
    masked, mask, labels, _ = tiny_batch()
    nothing = np.full_like(labels, -100)
    out = model(masked, mask, labels=nothing, generator=np.random.default_rng(0))
    assert out.generator_logits.shape == (0, VOCAB) and out.mlm_loss.item() == 0.0
    np.testing.assert_array_equal(out.corrupted_ids, masked)  # the input is the original
    assert (out.rtd_labels[mask == 1] == 0).all()
    out.loss.backward()
    assert out.loss.dtype == np.float32
    assert all(p.grad is None or p.grad.dtype == np.float32 for p in model.parameters())

