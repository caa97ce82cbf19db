"""Model folders: save_pretrained / from_pretrained, to and from transformers (issue 3).

A folder moves both ways between tinymlm and Hugging Face transformers and gives the same
logits; dtypes are kept; transformers 4.x configs and encoder-only checkpoints load; every
damaged or unfit folder is a CheckpointError that says what is wrong; saving is atomic.
"""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tinymlm.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from tinymlm.nn.bert import BertConfig, BertForMaskedLM, BertModel

SMALL = dict(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=16,
)


def random_model(cls=BertForMaskedLM, dtype=np.float64, seed=0, **config):
    """A tinymlm model whose every weight (biases and LayerNorms too) is random."""
    model = cls(BertConfig(**{**SMALL, **config})).to(dtype).eval()
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data = (rng.standard_normal(p.shape) * 0.3 + (1.0 if p.ndim == 1 else 0.0)).astype(dtype)
    return model


def make_inputs(seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, SMALL["vocab_size"], size=(2, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    types = np.zeros_like(ids)
    types[0, 5:] = 1
    return ids, mask, types


def ours_logits(model):
    ids, mask, types = make_inputs()
    return model(ids, mask, types).logits.numpy()


def hf_logits(model):
    import torch

    ids, mask, types = (torch.tensor(a) for a in make_inputs())
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()


@pytest.fixture(scope="module")
def transformers():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


def hf_random_model(transformers, cls_name="BertForMaskedLM", torch_dtype=None):
    import torch

    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(transformers.BertConfig(**SMALL))
    model = model.to(torch_dtype or torch.float64).eval()
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.normal_(0.0, 0.3)
    return model


# --- tinymlm <-> transformers -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tinymlm_folder_loads_in_transformers_with_the_same_logits(transformers, tmp_path, dtype):
    import torch

    model = random_model(dtype=dtype)
    model.save_pretrained(tmp_path)
    assert sorted(load_file(tmp_path / WEIGHTS_NAME)) == sorted(model.state_dict())
    theirs = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    assert theirs.dtype == {np.float64: torch.float64, np.float32: torch.float32}[dtype]
    rtol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(ours_logits(model), hf_logits(theirs), rtol=rtol, atol=rtol)
    # the decoder Hugging Face tied from the saved embeddings is our word embedding matrix
    np.testing.assert_array_equal(
        theirs.cls.predictions.decoder.weight.detach().numpy(),
        model.bert.embeddings.word_embeddings.weight.data,
    )


def test_transformers_folder_loads_here_with_the_same_logits_and_dtype(transformers, tmp_path):
    theirs = hf_random_model(transformers)
    theirs.save_pretrained(tmp_path)
    model = BertForMaskedLM.from_pretrained(tmp_path)
    assert model.dtype == np.float64 and not model.training
    np.testing.assert_allclose(ours_logits(model), hf_logits(theirs), rtol=1e-10, atol=1e-10)

    single = BertForMaskedLM.from_pretrained(tmp_path, dtype=np.float32)
    assert {p.dtype for p in single.parameters()} == {np.dtype(np.float32)}
    logits = ours_logits(single)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, hf_logits(theirs), rtol=2e-5, atol=2e-5)


def test_round_trip_through_tinymlm_is_exact(tmp_path):
    model = random_model(dtype=np.float32)
    model.save_pretrained(tmp_path)
    again = BertForMaskedLM.from_pretrained(tmp_path)
    assert again.dtype == np.float32
    assert again.config == model.config
    for (name, p), (name2, q) in zip(model.named_parameters(), again.named_parameters()):
        assert name == name2
        np.testing.assert_array_equal(p.data, q.data)
    np.testing.assert_array_equal(ours_logits(model), ours_logits(again))


def test_transformers_4x_config_with_torch_dtype_loads(transformers, tmp_path):
    theirs = hf_random_model(transformers)
    theirs.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["torch_dtype"] = config.pop("dtype")  # how transformers 4.x wrote it
    config["transformers_version"] = "4.44.2"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    model = BertForMaskedLM.from_pretrained(tmp_path)
    assert model.dtype == np.float64
    np.testing.assert_allclose(ours_logits(model), hf_logits(theirs), rtol=1e-10, atol=1e-10)


def test_encoder_only_folder_loads_in_bert_model_and_names_the_pooler(transformers, tmp_path):
    import torch

    theirs = hf_random_model(transformers, "BertModel")  # with its pooler
    theirs.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"pooler\.dense\.weight"):
        encoder = BertModel.from_pretrained(tmp_path)
    ids, mask, types = make_inputs()
    hidden = encoder(ids, attention_mask=mask, token_type_ids=types).last_hidden_state.numpy()
    with torch.no_grad():
        expected = theirs(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        ).last_hidden_state.numpy()
    np.testing.assert_allclose(hidden, expected, rtol=1e-10, atol=1e-10)

    with pytest.raises(CheckpointError, match="no MLM head") as err:
        BertForMaskedLM.from_pretrained(tmp_path)
    assert "cls.predictions.bias" in str(err.value)


def test_mlm_folder_gives_its_encoder_to_bert_model(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"cls\.predictions\.bias"):
        encoder = BertModel.from_pretrained(tmp_path)
    ids, mask, types = make_inputs()
    np.testing.assert_array_equal(
        encoder(ids, mask, types).last_hidden_state.numpy(),
        model.bert(ids, mask, types).last_hidden_state.numpy(),
    )


def test_tinymlm_encoder_folder_loads_in_transformers_bert_model(transformers, tmp_path):
    import torch

    encoder = random_model(BertModel)
    encoder.save_pretrained(tmp_path)
    theirs = transformers.BertModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    ids, mask, types = make_inputs()
    with torch.no_grad():
        expected = theirs(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        ).last_hidden_state.numpy()
    got = encoder(ids, mask, types).last_hidden_state.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_known_buffers_and_tied_copies_load_without_warning(tmp_path):
    model = random_model()
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / WEIGHTS_NAME)
    state["bert.embeddings.position_ids"] = np.arange(SMALL["max_position_embeddings"])[None]
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    save_file(state, tmp_path / WEIGHTS_NAME)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = BertForMaskedLM.from_pretrained(tmp_path)
    assert again.dtype == np.float64, "an int64 buffer must not decide the dtype"
    np.testing.assert_array_equal(ours_logits(again), ours_logits(model))


# --- bad folders ----------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    random_model(dtype=np.float32).save_pretrained(tmp_path)
    return tmp_path


def test_missing_folder_or_config_is_a_clear_error(saved, tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        BertForMaskedLM.from_pretrained(tmp_path / "nowhere")
    (saved / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match="not a model folder"):
        BertForMaskedLM.from_pretrained(saved)


def test_damaged_config_is_a_clear_error(saved):
    (saved / CONFIG_NAME).write_text('{"vocab_size": 40,')
    with pytest.raises(CheckpointError, match="damaged"):
        BertForMaskedLM.from_pretrained(saved)


def test_other_model_type_is_refused(saved):
    config = json.loads((saved / CONFIG_NAME).read_text())
    config["model_type"] = "gpt2"
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="gpt2"):
        BertForMaskedLM.from_pretrained(saved)


def test_missing_weights_file_is_a_clear_error(saved):
    (saved / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        BertForMaskedLM.from_pretrained(saved)


@pytest.mark.parametrize("keep", [0.5, 0.0, 1e-4], ids=["half", "empty", "header-cut"])
def test_truncated_weights_are_a_clear_error(saved, keep):
    data = (saved / WEIGHTS_NAME).read_bytes()
    (saved / WEIGHTS_NAME).write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="damaged or unreadable"):
        BertForMaskedLM.from_pretrained(saved)


def test_missing_weights_are_named(saved):
    state = load_file(saved / WEIGHTS_NAME)
    del state["bert.encoder.layer.1.output.dense.weight"]
    save_file(state, saved / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=r"bert\.encoder\.layer\.1\.output\.dense\.weight"):
        BertForMaskedLM.from_pretrained(saved)


def test_config_that_does_not_fit_the_weights_is_an_error(saved):
    config = json.loads((saved / CONFIG_NAME).read_text())
    config["hidden_size"] = 32
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape"):
        BertForMaskedLM.from_pretrained(saved)


# --- atomic saving --------------------------------------------------------------------------------


def test_a_save_that_fails_midway_leaves_the_previous_model(tmp_path, monkeypatch):
    old = random_model(dtype=np.float32, seed=1)
    old.save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_write_bytes = pathlib.Path.write_bytes

    def write_half_then_fail(self, data):
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_half_then_fail)
    new = random_model(dtype=np.float32, seed=2)
    with pytest.raises(OSError, match="simulated"):
        new.save_pretrained(tmp_path)
    monkeypatch.undo()

    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before, "no file changed and no temporary file was left behind"
    again = BertForMaskedLM.from_pretrained(tmp_path)
    np.testing.assert_array_equal(ours_logits(again), ours_logits(old))
