"""The BERT tokenizer: basic tokenization, then WordPiece, exactly as Hugging Face's slow one.

Text becomes ids in three stages, and this module keeps them apart so a learner can watch each:

1. **Special tokens are cut out** of the raw text first and kept whole, so
   ``"capital of [MASK]."`` gives ``capital of [MASK] .`` and ``"[MASK]ed"`` gives
   ``[MASK] ed``. (A never-split list inside the basic tokenizer alone is not enough: it only
   protects a special token that already stands between spaces.)
2. **Basic tokenization** of every other piece, in Hugging Face's order:
   clean (drop NUL, U+FFFD and control characters; every whitespace character, Unicode Zs
   included, becomes a space) -> spaces around CJK ideographs -> NFC -> split on whitespace ->
   per word: lowercase and strip accents (NFD, drop the nonspacing marks Mn) -> split off every
   punctuation character (ASCII 33-47, 58-64, 91-96, 123-126, and Unicode P*).
3. **WordPiece**: each word is cut greedily into the longest vocabulary entry from the left,
   the pieces after the first carrying the continuation prefix ``##``
   (``"unaffable" -> un ##aff ##able``). A word with a piece that matches nothing, or with more
   than 100 characters, becomes one ``[UNK]``.

Speed: every stage after the special-token cut works inside one run of characters between
ASCII spaces, tabs and newlines (Hugging Face splits there too, and no stage looks across such
a space), so the result for a whole run is cached. Real text repeats its runs ("the", "of",
"model.") so a few megabytes tokenize in seconds while the slow path stays a plain transcription
of the reference.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from tinymlm.fileio import atomic_write_json, atomic_write_text

MAX_INPUT_CHARS_PER_WORD = 100
CONTINUATION_PREFIX = "##"
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"

# Runs between these characters are tokenized independently (see the module docstring).
RUN_BOUNDARY = re.compile(r"[ \t\n\r]+")

# Hugging Face's clean_up_tokenization: the spaces decoding leaves before punctuation and
# inside English contractions, removed in this order.
CLEANUP_RULES = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)

# ASCII control characters (tab, newline and return are whitespace instead), and the ASCII
# punctuation classes 33-47, 58-64, 91-96, 123-126: one character each, or a run of others.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ASCII_PUNCTUATION_SPLIT = re.compile(r"[!-/:-@\[-`{-~]|[^!-/:-@\[-`{-~]+")

# The CJK Unified Ideographs blocks (not Hangul, Hiragana or Katakana, which use spaces).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def is_whitespace(char: str) -> bool:
    """Space, tab, newline, carriage return, or any Unicode space separator (Zs)."""
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_control(char: str) -> bool:
    """Any Unicode "other" (C*) character except tab/newline/return, which count as spaces."""
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def is_punctuation(char: str) -> bool:
    """Unicode punctuation (P*), plus every ASCII character that is not a letter or digit."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True  # "$", "^", "`", "+" ... are symbols (S*) in Unicode; BERT splits them too
    return unicodedata.category(char).startswith("P")


def is_cjk_ideograph(char: str) -> bool:
    cp = ord(char)
    return cp >= 0x3400 and any(lo <= cp <= hi for lo, hi in _CJK_RANGES)  # most text is below


def special_token_pattern(tokens: Iterable[str]) -> re.Pattern:
    """A regex whose ``split`` puts the special tokens at the odd indices.

    Longer tokens are tried first, so at each position the longest special token wins, like
    the trie Hugging Face uses.
    """
    alternatives = sorted({t for t in tokens if t}, key=lambda t: (-len(t), t))
    if not alternatives:
        return re.compile("((?!))")  # a group that never matches: split() returns [text]
    return re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")


class BasicTokenizer:
    """Stage 2: text -> words (cleaning, CJK spacing, lowercasing, accents, punctuation).

    ``never_split`` words (the special tokens) are neither lowercased nor split when they stand
    alone between spaces, as in Hugging Face.
    """

    def __init__(
        self,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        never_split: Iterable[str] = (),
    ):
        self.do_lower_case = do_lower_case
        # None means "follow do_lower_case", as in the original BERT.
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.never_split = frozenset(never_split)

    def tokenize(self, text: str) -> list[str]:
        if text.isascii():
            return self._tokenize_ascii(text)
        return self._tokenize_unicode(text)

    def _tokenize_ascii(self, text: str) -> list[str]:
        """The same steps for pure ASCII, where most of them are no-ops (no CJK, no accents,
        NFC changes nothing) and the rest are one regex each: about 5x faster."""
        words = []
        for word in _ASCII_CONTROL.sub("", text).split():
            if word in self.never_split:
                words.append(word)
            else:
                words.extend(
                    _ASCII_PUNCTUATION_SPLIT.findall(word.lower() if self.do_lower_case else word)
                )
        return words

    def _tokenize_unicode(self, text: str) -> list[str]:
        text = self._clean(text)
        if self.tokenize_chinese_chars:
            text = "".join(f" {c} " if is_cjk_ideograph(c) else c for c in text)
        # One code point per accented letter, whatever form the input used.
        text = unicodedata.normalize("NFC", text)
        words = []
        for word in text.split():
            if word in self.never_split:
                words.append(word)
                continue
            if self.do_lower_case:
                word = word.lower()  # lowercase the whole word: Greek final sigma needs context
                if self.strip_accents is not False:
                    word = self._strip_accents(word)
            elif self.strip_accents:
                word = self._strip_accents(word)
            words.extend(self._split_punctuation(word))
        return words

    @staticmethod
    def _clean(text: str) -> str:
        out = []
        for char in text:
            if char == "\0" or char == "\ufffd" or is_control(char):
                continue
            out.append(" " if is_whitespace(char) else char)
        return "".join(out)

    @staticmethod
    def _strip_accents(word: str) -> str:
        decomposed = unicodedata.normalize("NFD", word)  # "é" -> "e" + U+0301 (category Mn)
        return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")

    @staticmethod
    def _split_punctuation(word: str) -> list[str]:
        """Every punctuation character becomes a word of its own: "don't" -> don ' t."""
        pieces: list[str] = []
        start_new = True
        for char in word:
            if is_punctuation(char):
                pieces.append(char)
                start_new = True
            else:
                if start_new:
                    pieces.append("")
                    start_new = False
                pieces[-1] += char
        return pieces


def wordpiece(word: str, vocab: dict[str, int], unk_token: str, max_piece_chars: int) -> list[str]:
    """Stage 3: greedy longest-match-first WordPiece of one word.

    ``max_piece_chars`` (the longest vocabulary entry, in characters without ``##``) only
    shortens the search; the result is the same as trying every end position.
    """
    if len(word) > MAX_INPUT_CHARS_PER_WORD:
        return [unk_token]
    pieces = []
    start = 0
    while start < len(word):
        end = min(len(word), start + max_piece_chars)
        while end > start:
            piece = word[start:end] if start == 0 else CONTINUATION_PREFIX + word[start:end]
            if piece in vocab:
                break
            end -= 1
        else:
            return [unk_token]  # some piece matches nothing: the whole word is unknown
        pieces.append(piece)
        start = end
    return pieces


def load_vocab_file(path: str | os.PathLike) -> dict[str, int]:
    """vocab.txt: one token a line, id = line number (a repeated token keeps its last line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Vocabulary file not found: '{path}'. Pass the path of a BERT vocab.txt (one token "
            "a line), use BertTokenizer.from_pretrained(folder), or train one with "
            "BertTokenizer.train(texts, vocab_size)."
        )
    with open(path, encoding="utf-8") as f:
        return {line.rstrip("\n"): i for i, line in enumerate(f.readlines())}


class BertTokenizer:
    """Hugging Face's (slow) ``BertTokenizer``, rewritten to be read.

    >>> tok = BertTokenizer.from_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    ...                                 "the", "cat", "sat", "##s", "."])
    >>> tok.tokenize("The cats sat.")
    ['the', 'cat', '##s', 'sat', '.']
    >>> tok.encode("The cat [MASK].")
    [2, 5, 6, 4, 9, 3]
    """

    _SPECIAL_ROLES = ("unk", "sep", "pad", "cls", "mask")  # Hugging Face's order in all_special_*

    def __init__(
        self,
        vocab_file: str | os.PathLike,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        model_max_length: int = 512,
        clean_up_tokenization_spaces: bool = True,
    ):
        self._setup(
            load_vocab_file(vocab_file),
            do_lower_case=do_lower_case,
            strip_accents=strip_accents,
            tokenize_chinese_chars=tokenize_chinese_chars,
            unk_token=unk_token,
            sep_token=sep_token,
            pad_token=pad_token,
            cls_token=cls_token,
            mask_token=mask_token,
            model_max_length=model_max_length,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
        )

    def _setup(
        self,
        vocab: dict[str, int],
        *,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        model_max_length: int = 512,
        clean_up_tokenization_spaces: bool = True,
    ) -> None:
        self.vocab = vocab
        self.ids_to_tokens = {i: t for t, i in vocab.items()}
        self.unk_token, self.sep_token, self.pad_token = unk_token, sep_token, pad_token
        self.cls_token, self.mask_token = cls_token, mask_token
        missing = [t for t in self.all_special_tokens if t not in vocab]
        if missing:
            raise ValueError(
                f"The special tokens {missing} are not in the vocabulary ({len(vocab)} tokens). "
                "Add them to vocab.txt, or name the tokens the vocabulary uses "
                "(e.g. BertTokenizer(path, unk_token='<unk>'))."
            )
        self.do_lower_case = do_lower_case
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.model_max_length = int(model_max_length)
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.basic_tokenizer = BasicTokenizer(
            do_lower_case, strip_accents, tokenize_chinese_chars, self.all_special_tokens
        )
        self._special_pattern = special_token_pattern(self.all_special_tokens)
        self._max_piece_chars = max(
            (len(t) - len(CONTINUATION_PREFIX) if t.startswith(CONTINUATION_PREFIX) else len(t))
            for t in vocab
        )
        self._run_cache: dict[str, list[str]] = {}

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_vocab(cls, tokens: Sequence[str], **kwargs) -> BertTokenizer:
        """A tokenizer over ``tokens`` (id = position in the list); kwargs as ``__init__``."""
        self = cls.__new__(cls)
        self._setup({t: i for i, t in enumerate(tokens)}, **kwargs)
        return self

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> BertTokenizer:
        """Load a folder written by ``save_pretrained`` here or by transformers 4.x / 5.x.

        The vocabulary comes from vocab.txt, or, where only a fast tokenizer was saved, from the
        WordPiece model inside tokenizer.json. tokenizer_config.json (optional) gives the casing,
        the special tokens and model_max_length; keys this class does not know are ignored.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Tokenizer folder not found: '{folder}'. Pass a folder holding vocab.txt "
                "(and tokenizer_config.json), e.g. one written by save_pretrained."
            )
        config = _read_json(folder / CONFIG_FILE)
        special_map = _read_json(folder / "special_tokens_map.json")
        fast = _read_json(folder / "tokenizer.json")
        if (folder / VOCAB_FILE).is_file():
            vocab = load_vocab_file(folder / VOCAB_FILE)
        elif fast.get("model", {}).get("type") == "WordPiece":
            vocab = dict(fast["model"]["vocab"])
            normalizer = fast.get("normalizer") or {}
            for ours, theirs in [
                ("do_lower_case", "lowercase"),
                ("strip_accents", "strip_accents"),
                ("tokenize_chinese_chars", "handle_chinese_chars"),
            ]:
                if ours not in config and theirs in normalizer:
                    config[ours] = normalizer[theirs]
        else:
            raise FileNotFoundError(
                f"No vocab.txt (nor a WordPiece tokenizer.json) in '{folder}'. A BERT tokenizer "
                "folder holds vocab.txt; write one with BertTokenizer.save_pretrained(folder)."
            )
        kwargs = {}
        for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars"):
            if key in config:
                kwargs[key] = config[key]
        if config.get("clean_up_tokenization_spaces") is not None:
            kwargs["clean_up_tokenization_spaces"] = bool(config["clean_up_tokenization_spaces"])
        if isinstance(config.get("model_max_length"), (int, float)):
            # transformers writes 1e30 for "no limit"; keep it as a (big) int
            kwargs["model_max_length"] = int(config["model_max_length"])
        for role in cls._SPECIAL_ROLES:
            value = config.get(f"{role}_token", special_map.get(f"{role}_token"))
            if isinstance(value, dict):  # transformers 4.x may save an AddedToken as a dict
                value = value.get("content")
            if isinstance(value, str):
                kwargs[f"{role}_token"] = value
        self = cls.__new__(cls)
        self._setup(vocab, **kwargs)
        return self

    def save_pretrained(self, folder: str | os.PathLike) -> tuple[str, str]:
        """Write vocab.txt and tokenizer_config.json (each atomically) into ``folder``.

        The config names ``"tokenizer_class": "BertTokenizer"`` so that transformers'
        ``AutoTokenizer`` / ``BertTokenizer.from_pretrained(folder)`` load it.
        """
        folder = Path(folder)
        ids = sorted(self.ids_to_tokens)
        if ids != list(range(len(ids))):
            raise ValueError(
                "The vocabulary ids are not 0..V-1 without gaps (was a token repeated in "
                "vocab.txt?), so vocab.txt cannot represent it."
            )
        atomic_write_text(folder / VOCAB_FILE, "".join(self.ids_to_tokens[i] + "\n" for i in ids))
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "model_max_length": self.model_max_length,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            **{f"{role}_token": getattr(self, f"{role}_token") for role in self._SPECIAL_ROLES},
        }
        atomic_write_json(folder / CONFIG_FILE, config)
        return str(folder / VOCAB_FILE), str(folder / CONFIG_FILE)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        min_frequency: int = 2,
        required_tokens: Iterable[str] = (),
        **kwargs,
    ) -> BertTokenizer:
        """Train a WordPiece vocabulary on ``texts`` (see ``tinymlm.wordpiece_trainer``).

        The special tokens get ids 0..4 in the order [PAD], [UNK], [CLS], [SEP], [MASK] (or the
        names given as ``pad_token=`` ...); other kwargs go to the tokenizer.
        """
        from tinymlm.wordpiece_trainer import train_wordpiece

        roles = ("pad", "unk", "cls", "sep", "mask")
        defaults = {
            "pad": "[PAD]",
            "unk": "[UNK]",
            "cls": "[CLS]",
            "sep": "[SEP]",
            "mask": "[MASK]",
        }
        specials = tuple(kwargs.get(f"{r}_token", defaults[r]) for r in roles)
        tokens = train_wordpiece(
            texts,
            vocab_size,
            min_frequency=min_frequency,
            do_lower_case=kwargs.get("do_lower_case", True),
            strip_accents=kwargs.get("strip_accents"),
            tokenize_chinese_chars=kwargs.get("tokenize_chinese_chars", True),
            special_tokens=specials,
            required_tokens=required_tokens,
        )
        return cls.from_vocab(tokens, **kwargs)

    # -- vocabulary -----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return (
            f"BertTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
            f"model_max_length={self.model_max_length})"
        )

    @property
    def all_special_tokens(self) -> list[str]:
        """[UNK], [SEP], [PAD], [CLS], [MASK]: Hugging Face's order."""
        tokens = [getattr(self, f"{role}_token") for role in self._SPECIAL_ROLES]
        return list(dict.fromkeys(tokens))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.vocab[t] for t in self.all_special_tokens]

    @property
    def unk_token_id(self) -> int:
        return self.vocab[self.unk_token]

    @property
    def sep_token_id(self) -> int:
        return self.vocab[self.sep_token]

    @property
    def pad_token_id(self) -> int:
        return self.vocab[self.pad_token]

    @property
    def cls_token_id(self) -> int:
        return self.vocab[self.cls_token]

    @property
    def mask_token_id(self) -> int:
        return self.vocab[self.mask_token]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Unknown tokens map to the [UNK] id; one string gives one int."""
        unk = self.unk_token_id
        if isinstance(tokens, str):
            return self.vocab.get(tokens, unk)
        return [self.vocab.get(t, unk) for t in tokens]

    def convert_ids_to_tokens(
        self, ids: int | Iterable[int], skip_special_tokens: bool = False
    ) -> str | list[str]:
        """Ids outside the vocabulary give [UNK], as in Hugging Face; one int gives one string."""
        if isinstance(ids, (int, np.integer)):
            return self.ids_to_tokens.get(int(ids), self.unk_token)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [
            self.ids_to_tokens.get(int(i), self.unk_token) for i in ids if int(i) not in special
        ]

    # -- text -> tokens -> ids ------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Text -> WordPiece tokens, special tokens in the text kept whole."""
        if not isinstance(text, str):
            raise TypeError(f"tokenize() takes a str, got {type(text).__name__}")
        tokens: list[str] = []
        # re.split with a group: ordinary text at even indices, special tokens at odd ones
        for i, segment in enumerate(self._special_pattern.split(text)):
            if i % 2 == 1:
                tokens.append(segment)
                continue
            for run in RUN_BOUNDARY.split(segment):
                if run:
                    tokens.extend(self._tokenize_run(run))
        return tokens

    def _tokenize_run(self, run: str) -> list[str]:
        cached = self._run_cache.get(run)
        if cached is None:
            cached = [
                piece
                for word in self.basic_tokenizer.tokenize(run)
                for piece in wordpiece(word, self.vocab, self.unk_token, self._max_piece_chars)
            ]
            if len(self._run_cache) >= 1 << 20:  # bound the memory on endless streams of text
                self._run_cache.clear()
            self._run_cache[run] = cached
        return cached

    def encode(
        self, text: str, text_pair: str | None = None, add_special_tokens: bool = True
    ) -> list[int]:
        """Ids of ``[CLS] text [SEP]`` (or ``[CLS] a [SEP] b [SEP]``), no truncation."""
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        pair = None if text_pair is None else self.convert_tokens_to_ids(self.tokenize(text_pair))
        if not add_special_tokens:
            return ids + (pair or [])
        return self.build_inputs_with_special_tokens(ids, pair)

    def build_inputs_with_special_tokens(
        self, ids: list[int], pair_ids: list[int] | None = None
    ) -> list[int]:
        if pair_ids is None:
            return [self.cls_token_id, *ids, self.sep_token_id]
        return [self.cls_token_id, *ids, self.sep_token_id, *pair_ids, self.sep_token_id]

    def get_special_tokens_mask(
        self,
        token_ids_0: Sequence[int],
        token_ids_1: Sequence[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 where a token is special, 0 elsewhere (Hugging Face's signature and defaults).

        ``already_has_special_tokens=True`` (what an MLM collator wants): mark the ids of
        ``token_ids_0`` that are special tokens ([PAD] included). False: the mask of the
        sequence ``build_inputs_with_special_tokens`` would make from these ids.
        """
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError(
                    "With already_has_special_tokens=True pass one sequence that already holds "
                    "its [CLS]/[SEP], not a pair."
                )
            special = set(self.all_special_ids)
            return [1 if int(i) in special else 0 for i in token_ids_0]
        if token_ids_1 is None:
            return [1] + [0] * len(token_ids_0) + [1]
        return [1] + [0] * len(token_ids_0) + [1] + [0] * len(token_ids_1) + [1]

    # -- ids -> text ----------------------------------------------------------------------

    def decode(
        self,
        ids: int | Iterable[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Join the tokens with spaces and glue the ``##`` pieces to their word.

        Hugging Face's slow tokenizer then (clean_up_tokenization_spaces, default True) removes
        the space before . ? ! , and around contractions ("don ' t" -> "don't").
        The text is not the original: case, accents and spacing around punctuation are lost.
        """
        tokens = self.convert_ids_to_tokens(
            [ids] if isinstance(ids, (int, np.integer)) else ids, skip_special_tokens
        )
        text = " ".join(tokens).replace(" " + CONTINUATION_PREFIX, "").strip()
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            for before, after in CLEANUP_RULES:
                text = text.replace(before, after)
        return text

    # -- batches --------------------------------------------------------------------------

    def __call__(
        self,
        text_or_texts: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        padding: bool | str = False,
        max_length: int | None = None,
        truncation: bool | str = False,
        return_attention_mask: bool = True,
        add_special_tokens: bool = True,
    ) -> dict[str, np.ndarray]:
        """Encode a batch into int64 NumPy arrays ``input_ids``, ``token_type_ids``,
        ``attention_mask`` (1 = real token), all (B, S); a single string gives B = 1.

        padding: False (every row must then have the same length), True / "longest" (pad to
        the longest row), "max_length" (pad to max_length, default model_max_length). Padding
        is on the right with [PAD], token type 0 and attention 0.
        truncation: False, or True / "longest_first": cut each row to max_length (default
        model_max_length) tokens, special tokens included; a pair loses tokens from its longer
        side first, then alternately, as in Hugging Face.
        """
        single = isinstance(text_or_texts, str)
        texts = [text_or_texts] if single else list(text_or_texts)
        if text_pair is None:
            pairs = [None] * len(texts)
        else:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if single != isinstance(text_pair, str) or len(pairs) != len(texts):
                raise ValueError(
                    f"text_pair must match text: {len(texts)} text(s) but {len(pairs)} pair(s)."
                )
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding={padding!r}: use False, True ('longest') or 'max_length'.")
        if truncation not in (False, True, "longest_first", "do_not_truncate"):
            raise ValueError(f"truncation={truncation!r}: use False or True ('longest_first').")
        truncate = truncation in (True, "longest_first")
        limit = self.model_max_length if max_length is None else int(max_length)

        rows, types = [], []
        for text, pair in zip(texts, pairs, strict=True):
            ids = self.convert_tokens_to_ids(self.tokenize(text))
            pair_ids = None if pair is None else self.convert_tokens_to_ids(self.tokenize(pair))
            if truncate:
                n_special = (3 if pair_ids is not None else 2) if add_special_tokens else 0
                ids, pair_ids = self._truncate(ids, pair_ids, limit - n_special)
            if add_special_tokens:
                row = self.build_inputs_with_special_tokens(ids, pair_ids)
                first = len(ids) + 2
            else:
                row = ids + (pair_ids or [])
                first = len(ids)
            rows.append(row)
            types.append([0] * first + [1] * (len(row) - first))

        lengths = [len(r) for r in rows]
        if padding in (True, "longest"):
            width = max(lengths, default=0)
        elif padding == "max_length":
            width = max([limit, *lengths])  # rows longer than max_length stay (no truncation)
        else:
            width = lengths[0] if lengths else 0
            if any(n != width for n in lengths):
                raise ValueError(
                    f"The rows have different lengths ({min(lengths)}..{max(lengths)}) and "
                    "padding=False; pass padding=True to pad them into one array."
                )
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)  # (B, S)
        token_type_ids = np.zeros((len(rows), width), dtype=np.int64)  # (B, S)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)  # (B, S)
        for b, (row, row_types) in enumerate(zip(rows, types, strict=True)):
            input_ids[b, : len(row)] = row
            token_type_ids[b, : len(row)] = row_types
            attention_mask[b, : len(row)] = 1
        out = {"input_ids": input_ids, "token_type_ids": token_type_ids}
        if return_attention_mask:
            out["attention_mask"] = attention_mask
        return out

    @staticmethod
    def _truncate(
        ids: list[int], pair_ids: list[int] | None, budget: int
    ) -> tuple[list[int], list[int] | None]:
        """Hugging Face's "longest_first": trim the longer side down to the shorter one, then
        take the rest from both halves (the odd token from the pair)."""
        if budget < 0:
            raise ValueError(
                "max_length is smaller than the number of special tokens ([CLS], [SEP]) a row "
                "needs; raise max_length."
            )
        excess = len(ids) + len(pair_ids or []) - budget
        if excess <= 0:
            return ids, pair_ids
        if pair_ids is None:
            return ids[: len(ids) - excess], None
        first = min(abs(len(pair_ids) - len(ids)), excess)  # brings the sides level
        rest = excess - first
        if len(ids) > len(pair_ids):
            cut_ids, cut_pair = first + rest // 2, rest - rest // 2
        else:
            cut_ids, cut_pair = rest // 2, first + rest - rest // 2
        return ids[: len(ids) - cut_ids], pair_ids[: len(pair_ids) - cut_pair]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"'{path}' is not valid JSON ({e}); repair or delete it.") from None
    return data if isinstance(data, dict) else {}
