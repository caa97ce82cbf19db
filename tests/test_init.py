"""``--init DIR``: continued (domain-adaptive) pretraining from a Hugging Face BERT folder
(issue 24). Architecture and vocabulary come from DIR; its MLM head is kept, or a fresh one is
tied to its embeddings; --model-size, --vocab or --resume beside it is bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinymlm import BertConfig, BertModel, BertTokenizer
from tinymlm.data import tinyworld
from tinymlm.objectives import TrainConfig
from tinymlm.objectives.pretraining import pretrained_start
from tinymlm.train import main


def tiny_config(vocab_size):
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A sentence-embedding-like folder: an encoder, its vocabulary, no MLM head."""
    folder = tmp_path_factory.mktemp("encoder")
    tok = BertTokenizer.from_vocab(tinyworld.vocabulary())
    encoder = BertModel(tiny_config(len(tok)))
    for _, p in encoder.named_parameters():  # not what a fresh model would hold
        p.data[...] = np.random.default_rng(7).standard_normal(p.data.shape) * 0.02
    encoder.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text("\n\n".join(tinyworld.generate_documents(200, seed=1)))
    return path


def test_an_encoder_gets_a_fresh_head_tied_to_its_embeddings(encoder_dir):
    model = pretrained_start(TrainConfig(corpus=["x.txt"], init=str(encoder_dir)))
    stored = BertModel.from_pretrained(encoder_dir).state_dict()
    for name, value in model.bert.state_dict().items():
        np.testing.assert_array_equal(value, stored[name], err_msg=name)
    head = model.cls.predictions
    assert head._decoder_weight is model.bert.embeddings.word_embeddings.weight
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(
        tinyworld.vocabulary())


def test_an_mlm_head_in_the_folder_is_kept(tmp_path, encoder_dir):
    mlm = pretrained_start(TrainConfig(corpus=["x.txt"], init=str(encoder_dir)))
    mlm.cls.predictions.transform.dense.weight.data[...] = 0.5
    mlm.save_pretrained(tmp_path)
    kept = pretrained_start(TrainConfig(corpus=["x.txt"], init=str(tmp_path)))
    assert (kept.cls.predictions.transform.dense.weight.data == 0.5).all()


def test_train_from_init(tmp_path, encoder_dir, corpus):
    out = tmp_path / "run"
    assert main(["--init", str(encoder_dir), "--corpus", str(corpus), "--steps", "2",
                 "--batch-size", "4", "--max-length", "32", "--eval-every", "2",
                 "--out", str(out)]) == 0
    assert (out / "vocab.txt").read_text() == (Path(encoder_dir) / "vocab.txt").read_text()
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 32
    assert json.loads((out / "train_config.json").read_text())["init"] == str(encoder_dir)


@pytest.mark.parametrize("beside", [["--model-size", "tiny"], ["--vocab", "vocab.txt"],
                                    ["--vocab-size", "100"]])
def test_architecture_and_vocabulary_options_beside_init_are_refused(
        tmp_path, encoder_dir, corpus, capsys, beside):
    out = tmp_path / "run"
    assert main(["--init", str(encoder_dir), "--corpus", str(corpus), *beside,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init" in err[0] and beside[0] in err[0], err
    assert not out.exists()


def test_resume_beside_init_is_refused(tmp_path, encoder_dir, capsys):
    assert main(["--resume", str(tmp_path), "--init", str(encoder_dir)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_init_that_is_no_model_folder(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(["--init", str(tmp_path / "nothing"), "--corpus", str(corpus),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json" in err[0], err
    assert not out.exists()
