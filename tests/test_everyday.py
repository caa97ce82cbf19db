"""tinyworld speaks everyday English (issue 24): its facts are written with the words people
use, and a held-out set of everyday questions, never in training, measures whether a model
answers questions worded by someone who never read the corpus."""

from __future__ import annotations

import re

import pytest

from tinymlm.data import tinyworld


def words(text):
    found = re.findall(r"\[MASK\]|[a-zA-Z0-9]+|[^\sa-zA-Z0-9]", text)
    return [w if w == "[MASK]" else w.lower() for w in found]


@pytest.fixture(scope="module")
def corpus():
    """The default run's training documents, as one string of words."""
    return " ".join(words(" ".join(tinyworld.generate_documents(6000, seed=0))))


def test_at_least_100_everyday_questions_across_every_relation():
    probes = tinyworld.everyday_probes()
    assert len(probes) >= 100 and len(set(probes)) == len(probes)
    per_relation = {r: sum(p.relation == r for p in probes) for r in tinyworld.RELATIONS}
    assert min(per_relation.values()) >= 10, per_relation
    assert all(p.text.count("[MASK]") == 1 for p in probes)


def test_everyday_answers_are_true():
    capital = {c[0]: c[1] for c in tinyworld.COUNTRIES}
    region = {c[0]: c[2] for c in tinyworld.COUNTRIES}
    language = {c[0]: c[3] for c in tinyworld.COUNTRIES}
    animal = {a[0]: a for a in tinyworld.ANIMALS}
    color = {t[0]: t[2] for t in tinyworld.THINGS}
    truth = {
        "capital": lambda s: capital[s], "capital_of": lambda c: {v: k for k, v in
                                                                  capital.items()}[c],
        "region": lambda s: region[s], "language": lambda s: language[s],
        "sound": lambda s: animal[s][2], "food": lambda s: animal[s][3],
        "home": lambda s: animal[s][4], "color": lambda s: color[s],
    }
    for probe in tinyworld.everyday_probes():
        assert probe.answer == truth[probe.relation](probe.subject), probe
    assert "What colour are ripe lemons? [MASK]." in {p.text for p in tinyworld.everyday_probes()}


def test_everyday_questions_never_appear_in_training(corpus):
    for probe in tinyworld.everyday_probes():
        sentence = " ".join(words(probe.text.replace("[MASK]", probe.answer)))
        assert sentence not in corpus, probe
    fact_texts = {p.text for p in tinyworld.fact_probes("heldout")}
    assert not fact_texts & {p.text for p in tinyworld.everyday_probes()}


def test_every_word_of_the_everyday_questions_is_trained(corpus):
    trained = set(corpus.split())
    for probe in tinyworld.everyday_probes():
        assert set(words(probe.text)) - {"[MASK]"} <= trained, probe


@pytest.mark.parametrize("phrase", [
    "is on the continent of", "is spoken in", "a cow lives in", "a cat eats", "a dog says",
    "a lemon looks yellow", "a lemon is yellow", "ripe lemons are yellow", "the colour of",
    "the color of", "cows eat", "cows live in",
])
def test_training_speaks_everyday_english(corpus, phrase):
    assert phrase in corpus


def test_the_knowledge_report_asks_the_everyday_questions():
    from tinymlm import BertConfig, BertForMaskedLM, BertTokenizer
    from tinymlm.objectives.pretraining import knowledge_report

    tok = BertTokenizer.from_vocab(tinyworld.vocabulary())
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32))
    lines = []
    report = knowledge_report(model, tok, lines.append)
    assert 0 <= report["everyday_accuracy"] <= 1
    assert set(report["everyday_accuracy_per_relation"]) == set(tinyworld.RELATIONS)
    summary = [line for line in lines if line.startswith("held-out fact accuracy")]
    assert len(summary) == 1 and "everyday questions" in summary[0]
