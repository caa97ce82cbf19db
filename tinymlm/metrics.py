"""Evaluation metrics on plain Python and NumPy values: entity F1, SQuAD's F1 and exact match,
and the replaced-token-detection AUC.

They read predictions and gold answers, not models, so they are tested on values worked out by
hand (tests/test_metrics.py) and need no autograd.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np


def f1_score(right: int, predicted: int, gold: int) -> float:
    """The harmonic mean of precision right/predicted and recall right/gold (0 if none right)."""
    if right == 0:
        return 0.0
    precision, recall = right / predicted, right / gold
    return 2 * precision * recall / (precision + recall)


# --- tagging -------------------------------------------------------------------------------------


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) of every entity: BIO tags as spans (an I- without its B- opens one,
    as seqeval does), plain tags as runs of the same tag; "O" is outside."""
    spans, current = set(), None
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = (tag[:2], tag[2:]) if tag[:2] in ("B-", "I-") else ("", tag)
        continues = current is not None and kind == current[0] and prefix != "B-"
        if continues:
            current = (kind, current[1], i)
            continue
        if current is not None:
            spans.add(current)
        current = None if tag == "O" else (kind, i, i)
    return spans


def tagging_metrics(predicted: list[list[str]], gold: list[list[str]]) -> dict:
    """Word accuracy and micro entity F1 over sentences of word tags."""
    words = sum(len(g) for g in gold)
    right = sum(p == g for ps, gs in zip(predicted, gold) for p, g in zip(ps, gs))
    found = [entity_spans(p) for p in predicted]
    truth = [entity_spans(g) for g in gold]
    hits = sum(len(f & t) for f, t in zip(found, truth))
    return {
        "eval_accuracy": right / max(words, 1),
        "eval_entity_f1": f1_score(hits, sum(map(len, found)), sum(map(len, truth))),
    }


# --- question answering --------------------------------------------------------------------------


def normalize_answer(text: str) -> list[str]:
    """SQuAD's normalisation: lowercase, no punctuation, no articles; the words."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def qa_metrics(predicted: list[str], gold: list[str]) -> dict:
    """Exact match and word-overlap F1 (SQuAD's), averaged over questions; ``eval_accuracy``
    is the exact match."""
    exact, f1 = 0.0, 0.0
    for p, g in zip(predicted, gold, strict=True):
        p, g = normalize_answer(p), normalize_answer(g)
        exact += p == g
        common = sum((Counter(p) & Counter(g)).values())
        f1 += float(p == g) if not p or not g else f1_score(common, len(p), len(g))
    n = max(len(gold), 1)
    return {"eval_exact_match": exact / n, "eval_f1": f1 / n, "eval_accuracy": exact / n}


# --- replaced-token detection --------------------------------------------------------------------


def replaced_token_auc(logits, replaced) -> float:
    """ROC AUC of the discriminator: the chance that a replaced token scores above an original.

    Accuracy says little while replaced tokens are the minority: a discriminator that answers
    "original" everywhere scores the share of originals (often 85-90%) and looks good while
    knowing nothing. The AUC is 0.5 for a discriminator that knows nothing and 1 for a perfect
    one, whatever the share of replaced tokens. ``logits`` and ``replaced`` are 1-D NumPy arrays
    over the real tokens. Computed from ranks (Mann-Whitney U), ties sharing their mean rank;
    NaN when one of the two classes is empty.
    """
    scores = np.asarray(logits, dtype=np.float64).ravel()
    replaced = np.asarray(replaced, dtype=bool).ravel()
    positives = int(replaced.sum())
    negatives = replaced.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    _, group, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # ranks are 1-based, lowest score first
    mean_rank = first_rank + (counts - 1) / 2.0  # (groups,) ties share their mean rank
    rank_sum = mean_rank[group][replaced].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))
