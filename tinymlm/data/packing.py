"""From documents to fixed-length training sequences.

RoBERTa's FULL-SENTENCES packing: the documents are read as one stream, in order, and cut
into sequences of exactly ``max_length`` tokens::

    [CLS] end of doc 1 [SEP] doc 2 [SEP] start of doc 3 [SEP]
    [CLS] rest of doc 3 [SEP] doc 4 [SEP] [PAD] [PAD] ...

Each sequence is [CLS], up to ``max_length - 2`` tokens of the stream, and a closing [SEP];
inside a sequence, neighbouring documents are separated by [SEP]. A document may continue in
the next sequence. Padding (on the right) is rare: the last sequence, and a single [PAD] where
a document ends one token short of a full sequence (a [SEP] with no document after it would
carry nothing), so almost no compute is spent on padding. Sentence pairs (next-sentence
prediction) are not made: RoBERTa showed they do not help masked language modeling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def encode_documents(tokenizer, documents: Sequence[str]) -> list[list[int]]:
    """Token ids of each document, without [CLS]/[SEP] (packing adds them)."""
    return [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(doc)) for doc in documents]


def split_sentences(token_ids: Sequence[int], sentence_end_ids) -> list[list[int]]:
    """Cut a document's ids after every sentence-ending token (".", "?", "!")."""
    sentences, current = [], []
    for token in token_ids:
        current.append(token)
        if token in sentence_end_ids:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def pack_documents(
    token_id_lists: Sequence[Sequence[int]],
    max_length: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    sentence_end_ids=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pack documents into ``(input_ids, attention_mask)``, both int64 of shape (N, max_length).

    Empty documents are skipped. A [SEP] between two documents is written only where at least
    one token of the next document fits after it, so no sequence holds [SEP] [SEP].

    With ``sentence_end_ids`` (the ids of ".", "?", "!") the stream is cut between sentences
    only, as RoBERTa's FULL-SENTENCES does: a sentence that does not fit in what is left of
    a sequence starts the next one (the rest is padded), and only a sentence longer than a
    whole sequence is cut. Without it the stream is cut every ``max_length - 2`` tokens.
    """
    if int(max_length) < 3:
        raise ValueError(f"max_length must be at least 3 ([CLS] token [SEP]), got {max_length}")
    capacity = int(max_length) - 2  # room between [CLS] and the closing [SEP]
    ends = None if sentence_end_ids is None else {int(i) for i in sentence_end_ids}
    sequences: list[list[int]] = []
    body: list[int] = []

    def close():
        sequences.append([cls_id, *body, sep_id])
        body.clear()

    for document in token_id_lists:
        document = list(document)
        if not document:
            continue
        pieces = [document] if ends is None else split_sentences(document, ends)
        for index, piece in enumerate(pieces):
            opens_document = index == 0 and bool(body)  # a [SEP] after the previous document
            room = capacity - len(body) - opens_document
            if body and (room < 1 or (ends is not None and len(piece) > room)):
                close()  # no room for [SEP] and a token, or a sentence that must not be cut
            elif opens_document:
                body.append(sep_id)
            start = 0
            while start < len(piece):
                taken = piece[start : start + capacity - len(body)]
                body.extend(taken)
                start += len(taken)
                if len(body) == capacity:
                    close()
    if body:
        close()
    if not sequences:
        raise ValueError("nothing to pack: every document is empty")

    input_ids = np.full((len(sequences), max_length), pad_id, dtype=np.int64)  # (N, S)
    attention_mask = np.zeros((len(sequences), max_length), dtype=np.int64)  # (N, S)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = sequence
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


def train_eval_split(items: Sequence, eval_fraction: float = 0.05, seed: int = 0):
    """Split ``items`` (e.g. documents) into (train, eval) lists, the same for the same seed.

    ``ceil(eval_fraction · n)`` items, at least one when n >= 2 and the fraction is positive,
    go to eval; each part keeps the original order. Split documents *before* packing, so no
    document is in both parts.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(items)
    n_eval = int(np.ceil(eval_fraction * n))
    if eval_fraction > 0 and n >= 2:
        n_eval = max(n_eval, 1)
    n_eval = min(n_eval, n - 1) if n >= 1 else 0  # training keeps at least one item
    in_eval = np.zeros(n, dtype=bool)
    in_eval[np.random.Generator(np.random.PCG64(seed)).permutation(n)[:n_eval]] = True
    train = [item for item, e in zip(items, in_eval, strict=True) if not e]
    evaluation = [item for item, e in zip(items, in_eval, strict=True) if e]
    return train, evaluation
