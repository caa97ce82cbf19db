"""MLMCollator: selection rates, the 80/10/10 split, never special tokens, strategies, RNG state.

The statistics run on real English (Python's own reference docs, ~130k WordPiece tokens).
Tolerances come from the issue (selection 0.15 ± 0.005, split ± 0.01) and sit at >= 3
binomial standard deviations for the counts involved.
"""

import json
import math

import numpy as np
import pytest

from tinymlm.data import (
    MLMCollator,
    choose_spans,
    encode_documents,
    pack_documents,
    python_docs_corpus,
    span_length_distribution,
    tinyworld,
)
from tinymlm.tokenizer import BertTokenizer

try:
    from tinymlm.tokenizer import train_wordpiece
except ImportError:  # older layout: the trainer in its own module
    from tinymlm.wordpiece_trainer import train_wordpiece

STRATEGIES = ["token", "exact", "whole_word", "span"]


@pytest.fixture(scope="module")
def prose():
    """(tokenizer, input_ids, attention_mask) of Python's docs packed at S=128."""
    documents = python_docs_corpus()
    tok = BertTokenizer.from_vocab(train_wordpiece(documents, 2000))
    ids, mask = pack_documents(
        encode_documents(tok, documents), 128, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    )
    mask[-3:, 100:] = 0  # some padding in more than the last row
    ids[mask == 0] = tok.pad_token_id
    return tok, ids, mask


def special_or_pad(tok, ids, mask):
    return np.isin(ids, list(tok.all_special_ids)) | (mask == 0)


def outcome_fractions(tok, original, batch):
    """Fractions of selected positions that became [MASK], another token, or stayed."""
    selected = batch["labels"] != -100
    new = batch["input_ids"][selected]
    old = original[selected]
    masked = new == tok.mask_token_id
    kept = new == old
    return selected.sum(), masked.mean(), (~masked & ~kept).mean(), kept.mean()


def test_token_strategy_statistics(prose):
    tok, ids, mask = prose
    candidates = ~special_or_pad(tok, ids, mask)
    assert candidates.sum() >= 100_000
    batch = MLMCollator(tok, seed=0)(ids, mask)
    selected = batch["labels"] != -100
    assert abs(selected.sum() / candidates.sum() - 0.15) < 0.005
    n, masked, random, kept = outcome_fractions(tok, ids, batch)
    # a random pick equals the original with chance 1/(ordinary vocabulary): it counts as kept
    hit = 1 / (len(tok) - len(set(tok.all_special_ids)))
    assert abs(masked - 0.8) < 0.01
    assert abs(random - 0.1 * (1 - hit)) < 0.01
    assert abs(kept - (0.1 + 0.1 * hit)) < 0.01


def test_configurable_split(prose):
    tok, ids, mask = prose
    collate = MLMCollator(tok, mlm_probability=0.3, mask_replace_prob=0.5, random_replace_prob=0.4)
    batch = collate(ids, mask)
    candidates = ~special_or_pad(tok, ids, mask)
    assert abs((batch["labels"] != -100).sum() / candidates.sum() - 0.3) < 0.006
    _, masked, random, kept = outcome_fractions(tok, ids, batch)
    assert abs(masked - 0.5) < 0.01 and abs(random - 0.4) < 0.01 and abs(kept - 0.1) < 0.01
    only_mask = MLMCollator(tok, mask_replace_prob=1.0, random_replace_prob=0.0)(ids, mask)
    assert outcome_fractions(tok, ids, only_mask)[1] == 1.0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_special_tokens_and_padding_are_never_touched(prose, strategy):
    tok, ids, mask = prose
    batch = MLMCollator(tok, strategy=strategy, seed=3)(ids, mask)
    protected = special_or_pad(tok, ids, mask)
    selected = batch["labels"] != -100
    assert not (selected & protected).any()
    # nothing outside the selection changes; labels hold the original ids
    assert np.array_equal(batch["input_ids"][~selected], ids[~selected])
    assert np.array_equal(batch["labels"][selected], ids[selected])
    assert np.array_equal(batch["attention_mask"], mask)
    for key in ("input_ids", "attention_mask", "labels"):
        assert batch[key].dtype == np.int64 and batch[key].shape == ids.shape
    # random replacements come from the ordinary vocabulary only
    new = batch["input_ids"][selected]
    assert not np.isin(new[new != tok.mask_token_id], list(tok.all_special_ids)).any()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nothing_to_mask(strategy):
    tok = BertTokenizer.from_vocab(tinyworld.vocabulary())
    ids = np.array([[tok.cls_token_id, tok.sep_token_id, tok.pad_token_id]])
    batch = MLMCollator(tok, strategy=strategy)(ids, np.array([[1, 1, 0]]))
    assert (batch["labels"] == -100).all() and np.array_equal(batch["input_ids"], ids)


def test_exact_count(prose):
    tok, ids, mask = prose
    n = (~special_or_pad(tok, ids, mask)).sum(axis=1)
    for p, cap in [(0.15, 20), (0.15, 5), (0.5, 1000)]:
        batch = MLMCollator(tok, mlm_probability=p, max_predictions=cap, strategy="exact")(
            ids, mask
        )
        expected = [min(cap, max(1, round(p * k))) if k else 0 for k in n.tolist()]
        assert (batch["labels"] != -100).sum(axis=1).tolist() == expected


def test_exact_count_predicts_one_token_of_a_short_row(prose):
    # round(0.15 * 3) = 0: Google's rule still predicts one token (max(1, ...)).
    tok, ids, _ = prose
    words = [i for i in ids[0].tolist() if i not in set(tok.all_special_ids)][:3]
    row = np.array([[tok.cls_token_id, *words, tok.sep_token_id, tok.pad_token_id]])
    mask = (row != tok.pad_token_id).astype(np.int64)
    for seed in range(5):
        batch = MLMCollator(tok, strategy="exact", seed=seed)(row, mask)
        assert (batch["labels"] != -100).sum() == 1


def word_groups(tok, row_ids, row_candidates):
    """Lists of positions, one per word, found by reading the token strings."""
    groups = []
    for i, (token_id, ok) in enumerate(zip(row_ids, row_candidates, strict=True)):
        if not ok:
            continue
        piece = tok.ids_to_tokens[int(token_id)]
        if piece.startswith("##") and groups and groups[-1][-1] == i - 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_whole_words_are_masked_together(prose, strategy):
    tok, ids, mask = prose
    batch = MLMCollator(tok, strategy=strategy, seed=1)(ids, mask)
    selected = batch["labels"] != -100
    candidates = ~special_or_pad(tok, ids, mask)
    n_words = n_chosen = multi_piece = 0
    for row in range(len(ids)):
        for group in word_groups(tok, ids[row], candidates[row]):
            chosen = selected[row, group]
            assert chosen.all() or not chosen.any(), (row, group)
            n_words += 1
            n_chosen += chosen[0]
            multi_piece += len(group) > 1
    assert multi_piece > 1000  # the test saw many words of several pieces
    token_rate = selected.sum() / candidates.sum()
    if strategy == "whole_word":  # Bernoulli(0.15) per word
        sd = math.sqrt(0.15 * 0.85 / n_words)
        assert abs(n_chosen / n_words - 0.15) < 4 * sd
        assert abs(token_rate - 0.15) < 0.01
    else:  # a budget of round(0.15 n) tokens per row, overshooting by less than a word
        assert 0.15 <= token_rate < 0.16


def test_span_decision_is_one_per_span(prose):
    """SpanBERT replaces a whole span the same way: [MASK] runs are whole spans."""
    tok, ids, mask = prose
    batch = MLMCollator(tok, strategy="span", seed=2)(ids, mask)
    _, masked, random, kept = outcome_fractions(tok, ids, batch)
    assert abs(masked - 0.8) < 0.03 and abs(random + kept - 0.2) < 0.03
    # a run of selected tokens usually is one span: mixed runs must be rare
    selected = batch["labels"] != -100
    is_mask = batch["input_ids"] == tok.mask_token_id
    mixed = runs = 0
    for row in range(len(ids)):
        cut = np.flatnonzero(np.diff(np.concatenate([[0], selected[row].astype(int), [0]])))
        for start, end in zip(cut[::2], cut[1::2], strict=True):
            if end - start > 1:
                runs += 1
                mixed += 0 < is_mask[row, start:end].sum() < end - start
    # per-token decisions would mix ~1 - 0.8^L - ... of runs; per-span only merged neighbours
    assert runs > 500 and mixed / runs < 0.1


def test_span_lengths_follow_the_truncated_geometric_law():
    p, max_span = 0.2, 10
    lengths = np.arange(1, max_span + 1)
    pmf = p * (1 - p) ** (lengths - 1)
    pmf /= pmf.sum()
    assert np.allclose(span_length_distribution(p, max_span), pmf)
    mean = float((lengths * pmf).sum())
    assert abs(mean - 3.8) < 0.05  # SpanBERT's reported mean

    rng = np.random.Generator(np.random.PCG64(0))
    drawn = []
    for _ in range(20):
        spans = choose_spans(rng, np.ones(20_000, dtype=int), 3000, p, max_span)
        drawn += [count for first, count in spans if first + max_span <= 20_000][:-1]
    drawn = np.array(drawn)
    sd = math.sqrt(float((lengths**2 * pmf).sum()) - mean**2)
    assert abs(drawn.mean() - mean) < 4 * sd / math.sqrt(len(drawn))
    freq = np.bincount(drawn, minlength=max_span + 1)[1:] / len(drawn)
    assert np.abs(freq - pmf).max() < 0.01


def test_choose_spans_budget():
    rng = np.random.Generator(np.random.PCG64(1))
    word_lengths = rng.integers(1, 4, size=200)
    for budget in (1, 7, 30, 300, 10_000):
        spans = choose_spans(rng, word_lengths, budget)
        covered = np.zeros(len(word_lengths), dtype=bool)
        anchors = set()
        for anchor, count in spans:
            assert 1 <= count <= 10 and not covered[anchor]  # an anchor is a new word
            anchors.add(anchor)
            covered[anchor : anchor + count] = True
        total = int(word_lengths[covered].sum())
        assert len(anchors) == len(spans)
        if budget <= word_lengths.sum():
            assert budget <= total < budget + word_lengths.max()
        else:
            assert covered.all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_reproducible_and_resumable(prose, strategy):
    tok, ids, mask = prose
    ids, mask = ids[:64], mask[:64]
    a = MLMCollator(tok, strategy=strategy, seed=5)
    b = MLMCollator(tok, strategy=strategy, seed=5)
    first_a, first_b = a(ids, mask), b(ids, mask)
    assert all(np.array_equal(first_a[k], first_b[k]) for k in first_a)
    other = MLMCollator(tok, strategy=strategy, seed=6)(ids, mask)
    assert not np.array_equal(other["labels"], first_a["labels"])

    state = json.loads(json.dumps(a.state_dict()))  # must survive JSON
    second = a(ids, mask)  # dynamic masking: the next batch differs
    assert not np.array_equal(second["labels"], first_a["labels"])
    resumed = MLMCollator(tok, strategy=strategy, seed=123)
    resumed.load_state_dict(state)
    again = resumed(ids, mask)
    assert all(np.array_equal(second[k], again[k]) for k in second)


def test_bad_arguments(prose):
    tok, ids, mask = prose
    for kwargs in [
        {"mlm_probability": 1.5},
        {"mask_replace_prob": -0.1},
        {"mask_replace_prob": 0.8, "random_replace_prob": 0.3},
        {"strategy": "words"},
        {"max_predictions": 0},
        {"span_p": 0.0},
        {"max_span": 0},
    ]:
        with pytest.raises(ValueError):
            MLMCollator(tok, **kwargs)
    collate = MLMCollator(tok)
    with pytest.raises(ValueError, match="2-D"):
        collate(ids[0], mask[0])
    with pytest.raises(ValueError, match="attention_mask"):
        collate(ids, mask[:, :5])
    with pytest.raises(ValueError, match="vocabulary"):
        collate(ids + len(tok), mask)
    with pytest.raises(ValueError, match="PCG64"):
        collate.load_state_dict({"bit_generator": {"bit_generator": "MT19937"}})


def test_attention_mask_defaults_to_non_padding(prose):
    tok, ids, mask = prose
    a = MLMCollator(tok, seed=9)(ids, None)
    b = MLMCollator(tok, seed=9)(ids, (ids != tok.pad_token_id).astype(np.int64))
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ---- parity with Hugging Face's DataCollatorForLanguageModeling ----


def hf_collator(tok, tmp_path, **kwargs):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(sorted(tok.vocab, key=tok.vocab.get)) + "\n")
    hf_tok = transformers.BertTokenizer(str(vocab_file))
    assert hf_tok.vocab == tok.vocab
    collator = transformers.DataCollatorForLanguageModeling(hf_tok, **kwargs)
    collator.generator = torch.Generator().manual_seed(0)

    def mask_tokens(ids):
        # padding counts as special, as in Hugging Face's own padded batches
        special = torch.tensor(np.isin(ids, list(hf_tok.all_special_ids)))
        masked, labels = collator.torch_mask_tokens(torch.tensor(ids), special_tokens_mask=special)
        return {"input_ids": masked.numpy(), "labels": labels.numpy()}

    return mask_tokens


@pytest.mark.parametrize("split", [(0.8, 0.1), (0.6, 0.3)])
def test_statistical_parity_with_hugging_face(prose, tmp_path, split):
    tok, ids, mask = prose
    mask_replace, random_replace = split
    theirs = hf_collator(
        tok, tmp_path, mask_replace_prob=mask_replace, random_replace_prob=random_replace
    )(ids)
    ours = MLMCollator(tok, mask_replace_prob=mask_replace, random_replace_prob=random_replace)(
        ids, mask
    )
    candidates = (~special_or_pad(tok, ids, mask)).sum()
    rates = [(b["labels"] != -100).sum() / candidates for b in (theirs, ours)]
    sd = math.sqrt(0.15 * 0.85 * 2 / candidates)
    assert abs(rates[0] - rates[1]) < 4 * sd
    protected = special_or_pad(tok, ids, mask)
    assert not ((theirs["labels"] != -100) & protected).any()
    (n0, *f0), (n1, *f1) = outcome_fractions(tok, ids, theirs), outcome_fractions(tok, ids, ours)
    for a, b, expected in zip(f0, f1, [mask_replace, random_replace, 1 - sum(split)], strict=True):
        sd = math.sqrt(expected * (1 - expected) * (1 / n0 + 1 / n1))
        assert abs(a - b) < 4 * sd + 0.002  # + the 1/V chance a random pick equals the original


def test_where_we_differ_random_tokens_are_never_special(tmp_path):
    """Hugging Face draws random replacements from the whole vocabulary, specials included."""
    tok = BertTokenizer.from_vocab(tinyworld.vocabulary())  # small: specials are 1% of it
    docs = encode_documents(tok, tinyworld.generate_documents(3000, seed=0))
    ids, mask = pack_documents(docs, 128, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    specials = list(tok.all_special_ids)

    def special_replacements(batch):
        selected = batch["labels"] != -100
        new = batch["input_ids"][selected]
        return int(np.isin(new[new != tok.mask_token_id], specials).sum())

    assert special_replacements(MLMCollator(tok)(ids, mask)) == 0
    assert special_replacements(hf_collator(tok, tmp_path)(ids)) > 0


# ---- salient masking (REALM): one entity per sentence, plus token masking ----


@pytest.fixture(scope="module")
def tinyworld_batch():
    tok = BertTokenizer.from_vocab(tinyworld.vocabulary())
    entity_ids = sorted({tok.vocab[w] for ws in tinyworld.entities().values() for w in ws})
    docs = tinyworld.generate_documents(400, seed=2)
    ends = [tok.vocab[c] for c in ".?!"]
    ids, mask = pack_documents(encode_documents(tok, docs), 48, tok.cls_token_id,
                               tok.sep_token_id, tok.pad_token_id, sentence_end_ids=ends)
    return tok, entity_ids, ids, mask


def sentences_of(tok, row, mask_row):
    """Lists of positions, one per sentence of a packed row (ends: . ? ! and [SEP])."""
    ends = {tok.vocab[c] for c in ".?!"} | {tok.sep_token_id}
    sentences, current = [], []
    for position in range(1, int(mask_row.sum())):  # after [CLS]
        current.append(position)
        if row[position] in ends:
            sentences.append(current)
            current = []
    return sentences


def test_salient_selects_exactly_one_entity_per_sentence(tinyworld_batch):
    tok, entity_ids, ids, mask = tinyworld_batch
    collate = MLMCollator(tok, mlm_probability=1e-12, strategy="salient", salient_ids=entity_ids,
                          seed=0)
    selected = collate(ids, mask)["labels"] != -100
    is_entity = np.isin(ids, entity_ids)
    with_entity = 0
    for row in range(len(ids)):
        for sentence in sentences_of(tok, ids[row], mask[row]):
            n_entities = int(is_entity[row, sentence].sum())
            chosen = selected[row, sentence]
            assert chosen.sum() == min(n_entities, 1)
            assert is_entity[row, sentence][chosen].all()
            with_entity += n_entities > 0
    assert with_entity > 1000  # the test saw many sentences
    assert not (selected & ~is_entity).any()


def test_salient_chooses_uniformly_and_adds_token_masking(tinyworld_batch):
    tok, entity_ids, _, _ = tinyworld_batch
    batch = tok(["Paris is the capital of France. The sky is blue."] * 4000)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    p = 0.15
    collate = MLMCollator(tok, mlm_probability=p, strategy="salient", salient_ids=entity_ids,
                          seed=1)
    selected = collate(ids, mask)["labels"] != -100
    paris, france, blue = 1, 6, 11  # positions ([CLS] is 0)
    assert [tok.convert_ids_to_tokens([int(ids[0, i])])[0] for i in (paris, france, blue)] == \
        ["paris", "france", "blue"]
    # "blue" is the only entity of its sentence: always selected
    assert selected[:, blue].all()
    # one of Paris / France is chosen (½ each); the other is then selected with p
    paris_chosen = selected[:, paris] & ~selected[:, france]
    n = len(ids)
    assert abs(paris_chosen.mean() - 0.5 * (1 - p)) < 4 * math.sqrt(0.25 / n)
    assert (selected[:, paris] | selected[:, france]).all()
    # the other ordinary positions: probability p each
    others = [i for i in range(1, int(mask[0].sum()) - 1) if i not in (paris, france, blue)]
    rate = selected[:, others].mean()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / (n * len(others)))


def test_salient_is_reproducible_resumable_and_needs_entities(tinyworld_batch):
    tok, entity_ids, ids, mask = tinyworld_batch
    a = MLMCollator(tok, strategy="salient", salient_ids=entity_ids, seed=4)
    state = json.loads(json.dumps(a.state_dict()))
    first = a(ids, mask)
    b = MLMCollator(tok, strategy="salient", salient_ids=entity_ids, seed=99)
    b.load_state_dict(state)
    again = b(ids, mask)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(a(ids, mask)["labels"], first["labels"])  # dynamic
    with pytest.raises(ValueError, match="salient_ids"):
        MLMCollator(tok, strategy="salient")
