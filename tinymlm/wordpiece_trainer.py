"""Train a WordPiece vocabulary: merge the most frequent neighbouring pieces, BPE style.

The algorithm is the one Hugging Face's ``tokenizers`` WordPieceTrainer runs:

1. Pre-tokenize the corpus with the same basic tokenizer the finished ``BertTokenizer`` uses
   (cleaning, lowercasing, accents, punctuation), and count the words.
2. Spell each word as characters, every character after the first with the continuation
   prefix: ``"cats" -> c ##a ##t ##s``. All these characters start the vocabulary, so no word
   of the corpus can ever become [UNK].
3. Repeatedly merge the pair of neighbouring pieces that occurs most often, weighting each word
   by its count (``c`` + ``##a`` -> ``ca``; ``##t`` + ``##s`` -> ``##ts``), until the
   vocabulary has ``vocab_size`` tokens or no pair occurs ``min_frequency`` times.

Why frequency and not the likelihood score count(ab) / (count(a) count(b)) of the original
WordPiece paper: the likelihood score of *every* pair that shares a piece with the merged one
changes after each merge, so the best pair has to be searched again over all pairs; with the
plain count only the pairs inside the words that held the merged pair change, which a heap with
lazily discarded stale entries tracks cheaply (an 8k vocabulary from megabytes of text takes
seconds in pure Python). The likelihood score also prefers pairs of rare characters, which
fills a small vocabulary with junk; frequency spends it on what the corpus actually repeats.
Ties are broken by the pieces' text, so training is deterministic.

The finished tokenizer does not replay these merges: it cuts words by greedy longest match
(see ``tinymlm.tokenizer.wordpiece``). The merges only decide which pieces exist.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise

from tinymlm.tokenizer import (
    CONTINUATION_PREFIX,
    MAX_INPUT_CHARS_PER_WORD,
    RUN_BOUNDARY,
    BasicTokenizer,
    special_token_pattern,
)

DEFAULT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def count_words(
    texts: Iterable[str], basic: BasicTokenizer, special_tokens: Iterable[str]
) -> Counter:
    """How often each word of the basic tokenizer occurs in ``texts`` (special tokens left out).

    Runs between ASCII spaces are counted first (C speed) and only the distinct runs go
    through the basic tokenizer (the same locality the tokenizer's cache relies on).
    """
    specials = set(special_tokens)
    pattern = special_token_pattern(specials)
    runs: Counter = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(
                f"train_wordpiece expects an iterable of str, got a {type(text).__name__}"
            )
        for segment in pattern.split(text)[::2]:  # odd indices are the special tokens
            runs.update(RUN_BOUNDARY.split(segment))
    words: Counter = Counter()
    for run, n in runs.items():
        for word in basic.tokenize(run):
            if word not in specials:
                words[word] += n
    return words


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    *,
    min_frequency: int = 2,
    do_lower_case: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS,
    required_tokens: Iterable[str] = (),
) -> list[str]:
    """Learn a WordPiece vocabulary from ``texts``; returns the tokens, id = list position.

    Order: the special tokens (ids 0.. in the order given), the required tokens, the
    characters (first-of-word ones, then ``##`` ones, each sorted), then the merged pieces in
    the order they were learnt. ``required_tokens`` are put in whole (e.g. entity names that
    must stay one token); each must be a word the basic tokenizer leaves as it is (lowercase
    when ``do_lower_case``, no spaces or punctuation), optionally with a ``##`` prefix.
    Characters are never dropped, so the result can exceed ``vocab_size`` only by raising.
    """
    special_tokens = list(dict.fromkeys(special_tokens))
    basic = BasicTokenizer(do_lower_case, strip_accents, tokenize_chinese_chars, special_tokens)
    required = []
    for token in dict.fromkeys(required_tokens):
        word = token[len(CONTINUATION_PREFIX) :] if token.startswith(CONTINUATION_PREFIX) else token
        if basic.tokenize(word) != [word]:
            raise ValueError(
                f"required token {token!r} would not survive basic tokenization (it becomes "
                f"{basic.tokenize(word)}); give it as the tokenizer sees it: lowercase when "
                "do_lower_case, without spaces, punctuation or accents."
            )
        if token not in special_tokens:
            required.append(token)
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")

    word_counts = count_words(texts, basic, special_tokens)
    if not word_counts:
        raise ValueError("The training texts hold no words; pass a non-empty corpus.")
    # Words over 100 characters become [UNK] whatever the vocabulary: they teach nothing.
    word_counts = {w: n for w, n in word_counts.items() if len(w) <= MAX_INPUT_CHARS_PER_WORD}
    words = sorted(word_counts)  # a fixed order keeps the training deterministic
    counts = [word_counts[w] for w in words]
    spellings = [[w[0]] + [CONTINUATION_PREFIX + c for c in w[1:]] for w in words]

    initials = sorted({s[0] for s in spellings})
    continuations = sorted({p for s in spellings for p in s[1:]})
    vocab = list(dict.fromkeys([*special_tokens, *required, *initials, *continuations]))
    if vocab_size < len(vocab):
        raise ValueError(
            f"vocab_size={vocab_size} is smaller than the {len(vocab)} tokens every vocabulary "
            f"of this corpus needs (special + required tokens and every character); use "
            f"vocab_size >= {len(vocab)}."
        )
    known = set(vocab)

    # pair -> total count over the corpus, and pair -> words that (may) contain it
    pair_counts: Counter = Counter()
    pair_words: dict[tuple[str, str], set[int]] = {}
    for i, spelling in enumerate(spellings):
        for pair in pairwise(spelling):
            pair_counts[pair] += counts[i]
            pair_words.setdefault(pair, set()).add(i)
    # max-heap by count, ties to the alphabetically first pair; stale entries are skipped
    heap = [(-n, a, b) for (a, b), n in pair_counts.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg_count, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -neg_count:
            continue  # the count changed since this entry was pushed
        if -neg_count < min_frequency:
            break
        merged = a + b[len(CONTINUATION_PREFIX) :]  # b is never first in a word: it has ##
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        changed = set()
        for i in pair_words.pop((a, b)):
            old = spellings[i]
            new = _merge(old, a, b, merged)
            if len(new) == len(old):
                continue  # a stale member: an earlier merge already consumed the pair here
            n = counts[i]
            for pair in pairwise(old):
                pair_counts[pair] -= n
                changed.add(pair)
            for pair in pairwise(new):
                pair_counts[pair] += n
                pair_words.setdefault(pair, set()).add(i)
                changed.add(pair)
            spellings[i] = new
        for pair in changed:
            n = pair_counts[pair]
            if n > 0:
                heapq.heappush(heap, (-n, *pair))
            else:
                del pair_counts[pair]
                pair_words.pop(pair, None)
    return vocab


def _merge(pieces: list[str], a: str, b: str, merged: str) -> list[str]:
    """Replace every adjacent (a, b) in ``pieces``, left to right, by ``merged``."""
    out = []
    i = 0
    while i < len(pieces):
        if i + 1 < len(pieces) and pieces[i] == a and pieces[i + 1] == b:
            out.append(merged)
            i += 2
        else:
            out.append(pieces[i])
            i += 1
    return out
