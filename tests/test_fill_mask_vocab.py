"""fill-mask names the words a model cannot read whole, and --show-vocab lists those it can
(issue 24): a word outside the vocabulary is read as pieces whose meaning the model may never
have learned, and a user should hear of it."""

from __future__ import annotations

import json

import pytest

from tinymlm import BertConfig, BertForMaskedLM, BertTokenizer
from tinymlm.fill_mask import known_words, main, unknown_words

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "capital", "of", "is", "kenya",
         "paris", ".", "?", "'", "c", "##o", "##n", "##t", "##i", "##e", "r", "##p", "[unused0]"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tokenizer = BertTokenizer.from_vocab(VOCAB)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    BertForMaskedLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_unknown_words_are_the_basic_tokenizers_words_outside_the_vocabulary():
    tok = BertTokenizer.from_vocab(VOCAB)
    assert unknown_words(tok, "The capital of Kenya is [MASK].") == []
    # Lowercased, punctuation and special tokens aside, each word once, in order.
    text = "The CONTINENT of ripe Kenya? [MASK] [SEP] continent, it's ripe!"
    assert unknown_words(tok, text) == ["continent", "ripe", "it", "s"]


def test_known_words_are_whole_entries_only():
    tok = BertTokenizer.from_vocab(VOCAB)
    assert known_words(tok) == ["the", "capital", "of", "is", "kenya", "paris", "c", "r"]


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("as_json", [False, True])
def test_each_input_with_unknown_words_gets_one_line(model_dir, capsys, as_json):
    texts = ["The continent of Kenya is [MASK].", "The capital of Kenya is [MASK].",
             "Ripe [MASK] is ripe."]
    assert main(["--model", str(model_dir), *(["--json"] if as_json else []), *texts]) == 0
    out, err = capsys.readouterr()
    warnings = lines(err)
    assert len(warnings) == 2, err
    named = [w.split("understand: ")[1].split(" (")[0] for w in warnings]
    assert named == ["continent", "ripe"]  # the known words are not named; each word once
    assert texts[0] in warnings[0] and texts[2] in warnings[1]
    assert all("--show-vocab" in w for w in warnings)
    if as_json:  # stdout keeps Hugging Face's shape: one array, one element per input
        result = json.loads(out)
        assert len(result) == 3 and {"score", "token", "token_str", "sequence"} <= set(result[0][0])


def test_show_vocab_needs_no_text(model_dir, capsys):
    assert main(["--model", str(model_dir), "--show-vocab"]) == 0
    out, err = capsys.readouterr()
    assert out.split() == ["the", "capital", "of", "is", "kenya", "paris", "c", "r"]
    assert err == ""


def test_no_sentence_or_both_is_bad_input(model_dir, capsys):
    assert main(["--model", str(model_dir)]) == 2
    assert main(["--model", str(model_dir), "--show-vocab", "The [MASK]."]) == 2
    err = lines(capsys.readouterr().err)
    assert len(err) == 2 and all(line.startswith("error:") for line in err)
    assert "--show-vocab" in err[0] and "--show-vocab" in err[1]
