"""tinyworld: deterministic, single-token entities, held-out phrasings kept out, true facts."""

import re

import pytest

from tinymlm.data import tinyworld
from tinymlm.tokenizer import BertTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def tok():
    return BertTokenizer.from_vocab(tinyworld.vocabulary())


@pytest.fixture(scope="module")
def train_docs():
    return tinyworld.generate_documents(3000, seed=0)


@pytest.fixture(scope="module")
def eval_docs():
    return tinyworld.generate_documents(500, seed=0, split="eval")


def words(text):
    found = re.findall(r"\[MASK\]|[a-zA-Z0-9]+|[^\sa-zA-Z0-9]", text)
    return [w if w == "[MASK]" else w.lower() for w in found]


def sentences(text):
    return re.findall(r"[^.?!]*[.?!]", text)


def test_vocabulary_layout():
    vocab = tinyworld.vocabulary()
    assert vocab[:5] == SPECIALS
    assert len(vocab) == len(set(vocab)), "duplicate tokens"
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        assert c in vocab and "##" + c in vocab
    assert all(t == t.lower() for t in vocab if t not in SPECIALS)


def test_documents_are_deterministic_under_a_seed():
    a = tinyworld.generate_documents(50, seed=7)
    assert a == tinyworld.generate_documents(50, seed=7)
    assert a != tinyworld.generate_documents(50, seed=8)
    assert a != tinyworld.generate_documents(50, seed=7, split="eval")
    assert len(a) == 50 and all(len(sentences(d)) >= 2 for d in a)
    assert tinyworld.generate_documents(0, seed=0) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        tinyworld.generate_documents(3, seed=0, split="test")
    with pytest.raises(ValueError, match="n_docs"):
        tinyworld.generate_documents(-1, seed=0)
    with pytest.raises(ValueError, match="split"):
        tinyworld.fact_probes("eval")


def test_required_facts_are_there():
    countries = {c[0]: c for c in tinyworld.COUNTRIES}
    assert len(countries) >= 30
    named = "france germany italy spain japan china india egypt brazil canada".split()
    assert set(named) <= set(countries)
    assert countries["france"][1] == "paris" and countries["japan"][1] == "tokyo"
    assert len({c[1] for c in tinyworld.COUNTRIES}) == len(countries), "capitals are unique"


def test_every_entity_is_one_token(tok):
    for kind, names in tinyworld.entities().items():
        for name in names:
            assert tok.tokenize(name) == [name], f"{kind} {name!r} is not a single token"


def test_every_generated_word_is_a_whole_token(tok, train_docs, eval_docs):
    probes = tinyworld.fact_probes() + tinyworld.fact_probes("train")
    texts = train_docs + eval_docs + [p.text for p in probes] + tinyworld.SEED_SENTENCES
    for text in texts:
        assert tok.tokenize(text) == words(text), text
        assert tok.unk_token_id not in tok.encode(text)


def test_facts_in_training_documents_are_true(train_docs):
    """Every training sentence naming a capital and a country pairs them correctly."""
    country_of = {c[1]: c[0] for c in tinyworld.COUNTRIES}
    countries = {c[0] for c in tinyworld.COUNTRIES}
    checked = 0
    for doc in train_docs:
        for sentence in sentences(doc):
            ws = set(words(sentence))
            for capital in ws & set(country_of):
                named = ws & countries
                if named:
                    assert named == {country_of[capital]}, sentence
                    checked += 1
    assert checked > 1000


def test_held_out_phrasings_never_appear_in_training(train_docs):
    corpus = " ".join(words(" ".join(train_docs)))
    for probe in tinyworld.fact_probes("heldout"):
        sentence = " ".join(words(probe.text.replace("[MASK]", probe.answer)))
        assert sentence not in corpus, probe
    # the held-out seed question is a held-out phrasing too
    question = "what is the capital of"
    assert question not in corpus
    assert any(question in s.lower() for s in tinyworld.SEED_SENTENCES)


def test_held_out_phrasings_are_used_for_evaluation(eval_docs):
    corpus = " ".join(words(" ".join(eval_docs)))
    heldout = {" ".join(words(p.text.replace("[MASK]", p.answer))) for p in tinyworld.fact_probes()}
    assert sum(s in corpus for s in heldout) > len(heldout) // 2


def test_words_of_held_out_phrasings_are_all_trained(train_docs):
    """A held-out probe may be new as a sentence, never as a word."""
    trained = {w for d in train_docs for w in words(d)}
    for probe in tinyworld.fact_probes():
        assert set(words(probe.text)) - {"[MASK]"} <= trained, probe


def test_probes(tok):
    capital_of = {c[0]: c[1] for c in tinyworld.COUNTRIES}
    relations = set()
    for split in ("heldout", "train"):
        probes = tinyworld.fact_probes(split)
        assert len(probes) == len(set(probes))
        for p in probes:
            relations.add(p.relation)
            assert p.text.count("[MASK]") == 1
            assert tok.tokenize(p.answer) == [p.answer]
            if p.relation == "capital":
                assert capital_of[p.subject] == p.answer
            if p.relation == "capital_of":
                assert capital_of[p.answer] == p.subject
    assert relations == set(tinyworld.RELATIONS)
    by_relation = {r: 0 for r in tinyworld.RELATIONS}
    for p in tinyworld.fact_probes():
        by_relation[p.relation] += 1
    assert min(by_relation.values()) >= 20, by_relation


def test_seed_sentences_are_trained_or_held_out_as_intended(tok, train_docs):
    corpus = " ".join(words(" ".join(train_docs)))
    assert len(tinyworld.SEED_SENTENCES) == len(tinyworld.SEED_ANSWERS)
    for text, answer in zip(tinyworld.SEED_SENTENCES, tinyworld.SEED_ANSWERS, strict=True):
        assert text.count("[MASK]") == 1 and tok.tokenize(answer) == [answer]
    for showcase in ("the cat sat on the mat", "the quick brown fox jumps over the lazy dog"):
        assert showcase in corpus
    assert "paris is the capital of france" in corpus


def test_fact_accuracy():
    probes = tinyworld.fact_probes()
    perfect = tinyworld.fact_accuracy(probes, [p.answer.upper() for p in probes])
    assert perfect == {r: 1.0 for r in tinyworld.RELATIONS}
    # wrong on every capital question, right elsewhere
    guesses = ["x" if p.relation == "capital" else p.answer for p in probes]
    scores = tinyworld.fact_accuracy(probes, guesses)
    assert scores["capital"] == 0.0 and scores["color"] == 1.0
    with pytest.raises(ValueError, match="predictions"):
        tinyworld.fact_accuracy(probes, [])


def test_corpus_size(tok, train_docs):
    ids = [tok.encode(d, add_special_tokens=False) for d in train_docs]
    mean = sum(map(len, ids)) / len(ids)
    assert 20 <= mean <= 120, mean  # "documents of several sentences"


def test_no_document_repeats_a_country_or_capital(train_docs):
    """A masked country or capital can never be copied from its own document."""
    names = {c[0] for c in tinyworld.COUNTRIES} | {c[1] for c in tinyworld.COUNTRIES}
    for doc in train_docs:
        found = [w for w in words(doc) if w in names]
        assert len(found) == len(set(found)), doc
