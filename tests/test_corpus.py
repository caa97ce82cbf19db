"""Text corpora on disk and from Hugging Face datasets; packing; the train/eval split."""

import sys
import types

import numpy as np
import pytest

from tinymlm.data import (
    MLMCollator,
    encode_documents,
    load_hf_dataset,
    load_text_corpus,
    pack_documents,
    python_docs_corpus,
    split_documents,
    train_eval_split,
)
from tinymlm.tokenizer import BertTokenizer

try:
    from tinymlm.tokenizer import train_wordpiece
except ImportError:  # older layout: the trainer in its own module
    from tinymlm.wordpiece_trainer import train_wordpiece

CLS, SEP, PAD = 2, 3, 0

# ---- documents from text ----


def test_split_documents_at_blank_lines():
    text = "One line\nand its second line.\n\n\nTwo.\r\n  \t \r\nThree  words\there.\n"
    assert split_documents(text) == ["One line and its second line.", "Two.", "Three words here."]
    assert split_documents("") == [] and split_documents("\n \n\t\n") == []


def test_load_files_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha one.\n\nAlpha two.", encoding="utf-8")
    sub = tmp_path / "sub" / "deeper"
    sub.mkdir(parents=True)
    (sub / "b.txt").write_text("\ufeffBeta, with a byte-order mark.\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("Not a .txt file: skipped in folders.")
    (tmp_path / ".hidden.txt").write_text("Hidden: skipped.")
    (tmp_path / "sub" / "empty.txt").write_text("\n\n")
    named = tmp_path / "named.md"
    named.write_text("Any file named directly is read.")

    from_folder = load_text_corpus(tmp_path)
    assert from_folder == ["Alpha one.", "Alpha two.", "Beta, with a byte-order mark."]
    assert load_text_corpus(str(tmp_path / "a.txt")) == ["Alpha one.", "Alpha two."]
    both = load_text_corpus([named, tmp_path / "a.txt"])
    assert both == ["Any file named directly is read.", "Alpha one.", "Alpha two."]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        load_text_corpus(tmp_path / "nowhere.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n")
    with pytest.raises(ValueError, match="empty"):
        load_text_corpus(empty)
    with pytest.raises(ValueError, match="no corpus path"):
        load_text_corpus([])
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(ValueError, match="weights.bin.*UTF-8"):
        load_text_corpus(binary)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.txt is not UTF-8"):
        load_text_corpus(latin)
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match="no .txt files"):
        load_text_corpus(folder)
    (folder / "blank.txt").write_text("\n")
    with pytest.raises(ValueError, match="corpus .*nothing is empty"):
        load_text_corpus(folder)


def test_python_docs_are_real_prose():
    docs = python_docs_corpus()
    words = sum(len(d.split()) for d in docs)
    assert len(docs) > 1000 and words > 50_000
    assert any("assert" in d for d in docs)


# ---- Hugging Face datasets ----


def test_hf_dataset_without_the_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match="pip install datasets"):
        load_hf_dataset("wikitext", "wikitext-103-raw-v1")


def test_hf_dataset_rows_become_documents(monkeypatch):
    """The row handling, checked with a stand-in for `datasets` that records its call."""
    calls = []

    class Rows(list):
        column_names = ["text"]

    def load_dataset(name, config, split, **kwargs):
        calls.append((name, config, split, kwargs))
        return Rows([{"text": " = Title = \n"}, {"text": ""}, {"text": " A  paragraph.\n"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    docs = load_hf_dataset("wikitext", "wikitext-2-raw-v1", split="validation", streaming=False)
    assert docs == ["= Title =", "A paragraph."]
    assert calls == [("wikitext", "wikitext-2-raw-v1", "validation", {"streaming": False})]
    with pytest.raises(ValueError, match="no field 'content'"):
        load_hf_dataset("wikitext", text_field="content")


def test_hf_dataset_from_a_local_file(tmp_path):
    pytest.importorskip("datasets")
    path = tmp_path / "corpus.txt"
    path.write_text("First line of text.\n\nSecond line.\n", encoding="utf-8")
    docs = load_hf_dataset("text", data_files=str(path), split="train")
    assert docs == ["First line of text.", "Second line."]


# ---- packing ----


def unpack(input_ids, attention_mask):
    """Bodies of the sequences: what lies between [CLS] and the closing [SEP]."""
    bodies = []
    for ids, mask in zip(input_ids, attention_mask, strict=True):
        n = int(mask.sum())
        assert ids[0] == CLS and ids[n - 1] == SEP
        assert (mask[:n] == 1).all() and (mask[n:] == 0).all() and (ids[n:] == PAD).all()
        bodies.append(list(ids[1 : n - 1]))
    return bodies


def test_pack_small_example():
    docs = [[10, 11, 12], [20], [], [30, 31, 32, 33, 34, 35]]
    ids, mask = pack_documents(docs, 6, CLS, SEP, PAD)
    # 4 tokens of room per sequence; a [SEP] between documents needs one token after it
    assert ids.tolist() == [
        [CLS, 10, 11, 12, SEP, PAD],
        [CLS, 20, SEP, 30, 31, SEP],
        [CLS, 32, 33, 34, 35, SEP],
    ]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6, [1] * 6]
    assert ids.dtype == np.int64 and mask.dtype == np.int64


@pytest.mark.parametrize("max_length", [3, 7, 64])
def test_pack_keeps_every_token_in_order(max_length):
    rng = np.random.Generator(np.random.PCG64(max_length))
    docs = [list(rng.integers(5, 50, size=rng.integers(0, 90))) for _ in range(40)]
    ids, mask = pack_documents(docs, max_length, CLS, SEP, PAD)
    assert ids.shape[1] == max_length
    bodies = unpack(ids, mask)
    boundaries = np.cumsum([len(d) for d in docs if d])[:-1]
    filled = np.cumsum([len([t for t in b if t != SEP]) for b in bodies])
    for body, end in zip(bodies[:-1], filled, strict=False):
        # full, or one short where a document ends (no room for a [SEP] and a token)
        assert len(body) == max_length - 2 or (len(body) == max_length - 3 and end in boundaries)
    for body in bodies:  # no empty body, no [SEP] at its ends or twice in a row
        assert body and body[0] != SEP and body[-1] != SEP
        assert all(not (a == b == SEP) for a, b in zip(body, body[1:], strict=False))
    stream = [t for body in bodies for t in body]
    assert [t for t in stream if t != SEP] == [t for d in docs for t in d]
    # a [SEP] inside a body always marks the boundary between two documents
    seps = np.flatnonzero(np.array(stream) == SEP)
    assert set(seps - np.arange(len(seps))) <= set(boundaries.tolist())


DOT = 9  # a sentence end in the tests below


def test_pack_whole_sentences_small_example():
    docs = [[10, 11, DOT, 12, 13, 14, DOT], [20, DOT], [30, 31, 32, 33, 34, 35, 36, DOT]]
    ids, mask = pack_documents(docs, 7, CLS, SEP, PAD, sentence_end_ids=[DOT])
    # 5 tokens of room; "12 13 14 ." does not fit after "10 11 .", so it opens the next
    # sequence; the 8-token sentence is longer than a sequence and is the only one cut
    assert ids.tolist() == [
        [CLS, 10, 11, DOT, SEP, PAD, PAD],
        [CLS, 12, 13, 14, DOT, SEP, PAD],
        [CLS, 20, DOT, SEP, PAD, PAD, PAD],
        [CLS, 30, 31, 32, 33, 34, SEP],
        [CLS, 35, 36, DOT, SEP, PAD, PAD],
    ]
    assert (mask == (ids != PAD)).all()


@pytest.mark.parametrize("max_length", [6, 16, 64])
def test_pack_whole_sentences_keeps_every_token_and_cuts_only_long_sentences(max_length):
    rng = np.random.Generator(np.random.PCG64(max_length))
    docs = []
    for _ in range(40):
        sentences = [[*rng.integers(10, 50, size=rng.integers(0, 12)), DOT]
                     for _ in range(rng.integers(0, 5))]
        docs.append([t for sentence in sentences for t in sentence])
    ids, mask = pack_documents(docs, max_length, CLS, SEP, PAD, sentence_end_ids=[DOT])
    bodies = unpack(ids, mask)
    stream = [t for body in bodies for t in body if t != SEP]
    assert stream == [t for d in docs for t in d]
    for body in bodies:
        assert body and body[0] != SEP and body[-1] != SEP
        cut = body[-1] != DOT  # a sequence ends inside a sentence only if it is full
        assert not cut or len(body) == max_length - 2
    # fewer cut sentences than the plain stream packing makes
    plain = unpack(*pack_documents(docs, max_length, CLS, SEP, PAD))
    cuts = sum(b[-1] != DOT for b in bodies[:-1])
    assert cuts <= sum(b[-1] not in (DOT, SEP) for b in plain[:-1])


def test_pack_errors():
    with pytest.raises(ValueError, match="at least 3"):
        pack_documents([[5]], 2, CLS, SEP, PAD)
    with pytest.raises(ValueError, match="nothing to pack"):
        pack_documents([[], []], 8, CLS, SEP, PAD)


def test_train_eval_split():
    items = [f"doc{i}" for i in range(101)]
    train, evaluation = train_eval_split(items, eval_fraction=0.1, seed=3)
    assert len(evaluation) == 11 and len(train) == 90
    assert sorted(train + evaluation) == sorted(items)
    assert train == [x for x in items if x in set(train)]  # order kept
    assert (train, evaluation) == train_eval_split(items, eval_fraction=0.1, seed=3)
    assert evaluation != train_eval_split(items, eval_fraction=0.1, seed=4)[1]
    assert len(train_eval_split(items[:2], eval_fraction=0.01)[1]) == 1
    assert train_eval_split(items, eval_fraction=0.0)[1] == []
    with pytest.raises(ValueError, match="eval_fraction"):
        train_eval_split(items, eval_fraction=1.0)


# ---- a real corpus end to end: vocabulary trained on it, packed, masked ----


def test_real_corpus_end_to_end(tmp_path):
    (tmp_path / "docs.txt").write_text("\n\n".join(python_docs_corpus()[:400]), encoding="utf-8")
    documents = load_text_corpus(tmp_path)
    train, evaluation = train_eval_split(documents, eval_fraction=0.05, seed=0)
    tok = BertTokenizer.from_vocab(train_wordpiece(train, 1000))
    assert len(tok) <= 1000
    encoded = encode_documents(tok, train)
    assert encoded[0] == tok.encode(train[0], add_special_tokens=False)
    ids, mask = pack_documents(encoded, 64, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    assert (ids == tok.unk_token_id).mean() < 0.01
    batch = MLMCollator(tok, seed=0)(ids, mask)
    assert 0.1 < (batch["labels"] != -100).mean() < 0.2
