"""tinymlm.metrics against values worked out by hand: entity F1, SQuAD's F1 and exact match,
and the replaced-token-detection AUC."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlm.metrics import (
    entity_spans,
    f1_score,
    normalize_answer,
    qa_metrics,
    replaced_token_auc,
    tagging_metrics,
)


def test_f1_is_the_harmonic_mean_of_precision_and_recall():
    assert f1_score(1, 2, 4) == pytest.approx(2 * 0.5 * 0.25 / 0.75)  # P 1/2, R 1/4: 1/3
    assert f1_score(3, 3, 3) == 1.0
    assert f1_score(0, 5, 5) == 0.0
    assert f1_score(0, 0, 0) == 0.0  # nothing predicted, nothing to find


def test_entity_spans_read_bio_and_plain_tags():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG"]) == {
        ("PER", 0, 1),
        ("LOC", 3, 3),
        ("LOC", 4, 4),
        ("ORG", 5, 5),  # an I- without its B- opens a span, as seqeval does
    }
    assert entity_spans(["CITY", "CITY", "O", "COUNTRY"]) == {("CITY", 0, 1), ("COUNTRY", 3, 3)}
    assert entity_spans(["O", "O"]) == set()


def test_tagging_metrics_against_counts_by_hand():
    gold = [["COUNTRY", "O", "CITY"], ["O", "ANIMAL"]]
    predicted = [["COUNTRY", "O", "O"], ["ANIMAL", "ANIMAL"]]
    result = tagging_metrics(predicted, gold)
    assert result["eval_accuracy"] == pytest.approx(3 / 5)
    # found {COUNTRY 0}, {ANIMAL 0-1}; truth {COUNTRY 0, CITY 2}, {ANIMAL 1}: 1 right of 2 and 3
    precision, recall = 1 / 2, 1 / 3
    assert result["eval_entity_f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_answers_are_normalised_as_squad_does():
    # punctuation is deleted, not turned into a space, as in SQuAD's evaluation script
    assert normalize_answer("The  Eiffel-Tower, in PARIS!") == ["eiffeltower", "in", "paris"]
    assert normalize_answer("an apple a day") == ["apple", "day"]
    assert normalize_answer("...") == []


def test_qa_metrics_follow_squad():
    result = qa_metrics(["The Paris", "new delhi", "x"], ["paris.", "delhi", "y"])
    assert result["eval_exact_match"] == pytest.approx(1 / 3)
    assert result["eval_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)  # delhi: P 1/2, R 1
    assert result["eval_accuracy"] == result["eval_exact_match"]
    # an answer that normalises to nothing scores 1 only against another such answer
    assert qa_metrics(["the"], ["a"])["eval_f1"] == 1.0
    assert qa_metrics(["the"], ["paris"])["eval_f1"] == 0.0
    with pytest.raises(ValueError):
        qa_metrics(["one"], ["one", "two"])


def test_replaced_token_auc_by_hand():
    assert replaced_token_auc([0.1, 0.9], [False, True]) == 1.0
    assert replaced_token_auc([0.9, 0.1], [False, True]) == 0.0
    assert replaced_token_auc([0.5, 0.5, 0.5], [False, True, False]) == 0.5  # ties: half
    # replaced 0.4 and 0.8 against originals 0.2, 0.6: pairs won 1 + 2 of 4
    assert replaced_token_auc([0.2, 0.4, 0.6, 0.8], [False, True, False, True]) == 0.75
    assert np.isnan(replaced_token_auc([1.0, 2.0], [False, False]))


def test_replaced_token_auc_equals_the_pairwise_definition():
    rng = np.random.default_rng(3)
    for n, ties in [(40, False), (60, True)]:
        scores = rng.normal(size=n)
        if ties:
            scores = np.round(scores, 1)  # many equal scores
        replaced = rng.random(n) < 0.3
        pos, neg = scores[replaced], scores[~replaced]
        pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        assert abs(replaced_token_auc(scores, replaced) - pairs.mean()) < 1e-12
