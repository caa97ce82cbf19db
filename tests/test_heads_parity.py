"""The three fine-tuning heads against Hugging Face's, weight for weight (issue 8).

For each head one random transformers model (every weight drawn at random, biases and
LayerNorms included) is saved and loaded into tinymlm. On a batch with padding and a sentence
pair, the logits, the loss and the gradient of every parameter must agree: to 1e-9 relative
in float64, 2e-5 in float32. Then: a gradient check of each loss with respect to the head's
weight, loading a pretraining folder (encoder loaded, head initialised with a warning), and
the way back (a folder saved here loads in transformers with the same logits).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from parity import assert_gradients_close  # noqa: E402

from tinymlm.autograd import Tensor  # noqa: E402
from tinymlm.gradcheck import gradcheck  # noqa: E402
from tinymlm.nn.bert import BertConfig, BertForMaskedLM  # noqa: E402
from tinymlm.nn.heads import (  # noqa: E402
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    num_labels_of,
)

HF_CONFIG = dict(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=16,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
B, S = 3, 9
HEADS = {  # ours, theirs, extra config
    "sequence": (BertForSequenceClassification, "BertForSequenceClassification", {"num_labels": 3}),
    "token": (BertForTokenClassification, "BertForTokenClassification", {"num_labels": 5}),
    "qa": (BertForQuestionAnswering, "BertForQuestionAnswering", {}),
}


def make_batch(kind: str) -> dict:
    """Padding on rows 0 and 1, a sentence pair (token types 0 then 1) on row 2."""
    rng = np.random.default_rng(1)
    ids = rng.integers(1, HF_CONFIG["vocab_size"], size=(B, S))
    mask = np.ones((B, S), dtype=np.int64)
    mask[0, 5:] = 0
    mask[1, 8:] = 0
    ids[mask == 0] = 0
    types = np.zeros((B, S), dtype=np.int64)
    types[2, 4:] = 1
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if kind == "sequence":
        batch["labels"] = np.array([2, 0, 1])
    elif kind == "token":
        labels = rng.integers(0, 5, size=(B, S))
        labels[mask == 0] = -100
        labels[:, 0] = -100  # [CLS] is not scored
        labels[2, 3] = -100
        batch["labels"] = labels
    else:  # row 1's end lies beyond the sequence: clamped to S and ignored (HF's rule)
        batch["start_positions"] = np.array([1, 2, 5])
        batch["end_positions"] = np.array([3, 40, 7])
    return batch


def random_hf_model(kind: str):
    _, hf_name, extra = HEADS[kind]
    torch.manual_seed(0)
    model = getattr(transformers, hf_name)(transformers.BertConfig(**HF_CONFIG, **extra))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.3)
    return model.double()


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    folders = {}
    for kind in HEADS:
        folders[kind] = tmp_path_factory.mktemp(f"hf_{kind}")
        random_hf_model(kind).save_pretrained(folders[kind])
    return folders


def outputs_of(out, kind):
    if kind == "qa":
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}
    return {"logits": out.logits}


def run_hf(folder, kind, torch_dtype, batch):
    model = getattr(transformers, HEADS[kind][1]).from_pretrained(folder).to(torch_dtype).train()
    out = model(**{k: torch.tensor(v) for k, v in batch.items()})
    out.loss.backward()
    logits = {k: v.detach().numpy() for k, v in outputs_of(out, kind).items()}
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    return logits, out.loss.item(), grads


def run_ours(model, batch):
    kind = next(k for k, v in HEADS.items() if isinstance(model, v[0]))
    out = model(**batch)
    logits = {k: v.numpy() for k, v in outputs_of(out, kind).items()}
    out.loss.backward()
    return logits, out.loss, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", list(HEADS))
@pytest.mark.parametrize(
    "np_dtype, torch_dtype, rtol",
    [(np.float64, torch.float64, 1e-9), (np.float32, torch.float32, 2e-5)],
    ids=["float64", "float32"],
)
def test_logits_loss_and_every_gradient_match_transformers(
    hf_folders, kind, np_dtype, torch_dtype, rtol
):
    batch = make_batch(kind)
    hf_logits, hf_loss, hf_grads = run_hf(hf_folders[kind], kind, torch_dtype, batch)
    model = HEADS[kind][0].from_pretrained(hf_folders[kind], dtype=np_dtype).train()
    logits, loss, grads = run_ours(model, batch)
    assert set(logits) == set(hf_logits)
    for name, value in logits.items():
        assert value.dtype == np_dtype and value.shape == hf_logits[name].shape, name
        np.testing.assert_allclose(value, hf_logits[name], rtol=rtol, atol=rtol, err_msg=name)
    assert loss.dtype == np_dtype
    np.testing.assert_allclose(loss.item(), hf_loss, rtol=rtol)
    assert_gradients_close(grads, hf_grads, rtol)


def test_label_count_comes_from_the_folder(hf_folders):
    assert BertForSequenceClassification.from_pretrained(hf_folders["sequence"]).num_labels == 3
    assert BertForTokenClassification.from_pretrained(hf_folders["token"]).num_labels == 5


def test_every_qa_position_out_of_range_gives_zero_loss(hf_folders):
    """All answers truncated away: Hugging Face gives NaN; tinymlm a loss of exactly 0."""
    model = BertForQuestionAnswering.from_pretrained(hf_folders["qa"])
    batch = dict(make_batch("qa"), start_positions=np.full(B, 50), end_positions=np.full(B, S))
    out = model(**batch)
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert not np.any(model.qa_outputs.weight.grad)


# --- gradient checks -------------------------------------------------------------------------


def tiny_config(**extra) -> BertConfig:
    return BertConfig(
        vocab_size=12,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=8,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        extra=extra,
    )


@pytest.mark.parametrize("kind", list(HEADS))
def test_gradcheck_of_the_loss_with_respect_to_the_head_weight(kind):
    cls = HEADS[kind][0]
    model = cls(tiny_config(), **({"num_labels": 3} if kind != "qa" else {})).to(np.float64)
    head = model.qa_outputs if kind == "qa" else model.classifier
    rng = np.random.default_rng(0)
    head.weight.data = rng.normal(0.0, 1.0, head.weight.shape)  # away from the tiny init
    batch = make_batch(kind)
    batch = {k: v[:, :6] if v.ndim == 2 else v for k, v in batch.items()}
    batch["input_ids"] = batch["input_ids"] % 12
    if kind == "token":
        batch["labels"] = np.where(batch["labels"] >= 0, batch["labels"] % 3, -100)
    if kind == "qa":
        batch["end_positions"] = np.array([3, 2, 9])  # 9 > S = 6: clamped and ignored

    def loss(weight):
        head.weight = weight
        return model(**batch).loss

    result = gradcheck(loss, [Tensor(head.weight.data.copy(), requires_grad=True)])
    assert result.ok and result.max_error < 1e-6, str(result)


# --- loading a pretraining folder, and the way back ------------------------------------------


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory):
    config = tiny_config()
    config.vocab_size = HF_CONFIG["vocab_size"]
    model = BertForMaskedLM(config)
    folder = tmp_path_factory.mktemp("mlm")
    model.save_pretrained(folder)
    return folder, model


@pytest.mark.filterwarnings("ignore:weights in .* not used")  # the MLM head: expected
@pytest.mark.parametrize("kind", list(HEADS))
def test_from_a_pretraining_folder_the_encoder_loads_and_the_head_is_new(mlm_folder, kind):
    folder, mlm = mlm_folder
    cls = HEADS[kind][0]
    kwargs = {"num_labels": 4} if kind != "qa" else {}
    with pytest.warns(UserWarning, match="newly initialised") as record:
        model = cls.from_pretrained(folder, **kwargs)
    fresh_warning = next(str(w.message) for w in record if "newly" in str(w.message))
    expected_fresh = {
        "sequence": [
            "bert.pooler.dense.weight",
            "bert.pooler.dense.bias",
            "classifier.weight",
            "classifier.bias",
        ],
        "token": ["classifier.weight", "classifier.bias"],
        "qa": ["qa_outputs.weight", "qa_outputs.bias"],
    }[kind]
    for name in expected_fresh:
        assert name in fresh_warning
    params = dict(model.named_parameters())
    for name, p in mlm.named_parameters():
        if name.startswith("bert."):
            np.testing.assert_array_equal(params[name].data, p.data, err_msg=name)
    for name in expected_fresh:  # BERT's initialisation: normal(0, 0.02) weights, zero biases
        value = params[name].data
        if name.endswith("bias"):
            assert not np.any(value), name
        else:
            assert 0.005 < value.std() < 0.05, name
    if kind != "qa":
        assert num_labels_of(model.config) == 4 and model.id2label[3] == "LABEL_3"


def test_a_folder_without_the_encoder_is_still_an_error(tmp_path):
    model = BertForTokenClassification(tiny_config(), num_labels=2)
    model.save_pretrained(tmp_path)
    from safetensors.numpy import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    del state["bert.embeddings.word_embeddings.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="word_embeddings"):
        BertForTokenClassification.from_pretrained(tmp_path)


@pytest.mark.parametrize("kind", list(HEADS))
def test_a_folder_saved_here_loads_in_transformers(tmp_path, kind):
    cls, hf_name, _ = HEADS[kind]
    labels = ["no", "yes", "maybe"]
    model = cls(tiny_config(), **({"id2label": labels} if kind != "qa" else {}))
    model.to(np.float64).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(transformers, hf_name).from_pretrained(tmp_path).double().eval()
    if kind != "qa":
        assert theirs.config.id2label == dict(enumerate(labels))
    batch = make_batch(kind)
    batch = {k: v for k, v in batch.items() if "label" not in k and "position" not in k}
    batch["input_ids"] = batch["input_ids"] % 12
    batch = {k: v[:, :8] for k, v in batch.items()}
    ours = outputs_of(model.eval()(**batch), kind)
    with torch.no_grad():
        hf = outputs_of(theirs(**{k: torch.tensor(v) for k, v in batch.items()}), kind)
    for name in ours:
        np.testing.assert_allclose(ours[name].numpy(), hf[name].numpy(), rtol=1e-10, atol=1e-12)
