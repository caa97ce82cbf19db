"""benchmarks/mlm_vs_clm.py's measurements, on stand-in models whose answers are known: the
evidence side of a probe, gap filling (the MLM at its [MASK], the causal model scoring whole
sentences), next-word perplexities, and the equal-FLOPs step count. The real run is the
benchmark's own (``--quick`` for a smoke run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tinymlm.data import tinyworld
from tinymlm.tokenizer import BertTokenizer

ROOT = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("mlm_vs_clm", ROOT / "benchmarks/mlm_vs_clm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()
TOKENIZER = BertTokenizer.from_vocab(tinyworld.vocabulary())
V = len(TOKENIZER)


def output(logits):
    return SimpleNamespace(logits=SimpleNamespace(data=logits))


def oracle_mlm(answer_id):
    """Logits that put the answer at every position."""
    def model(ids, mask=None):
        logits = np.zeros((*np.shape(ids), V))
        logits[..., answer_id] = 5.0
        return output(logits)
    return model


def oracle_clm(answer_id):
    """Next-token logits that like the answer wherever it is the next token: only the sentence
    holding the answer scores above the others."""
    def model(ids, mask=None):
        ids = np.asarray(ids)
        logits = np.zeros((*ids.shape, V))
        b, t = np.nonzero(ids[:, 1:] == answer_id)
        logits[b, t, answer_id] = 5.0
        return output(logits)
    return model


def test_evidence_side():
    probe = tinyworld.Probe
    assert bench.evidence_side(probe("capital", "france", "[MASK] is the capital of France.",
                                     "paris")) == "right"
    assert bench.evidence_side(probe("capital", "france", "The capital of France is [MASK].",
                                     "paris")) == "left"
    assert bench.evidence_side(probe("sound", "wolf", "Wolves say [MASK].", "howl")) == "left"


def test_gap_filling_takes_each_models_best_candidate():
    right = tinyworld.Probe("capital", "france", "[MASK] is the capital of France.", "paris")
    left = tinyworld.Probe("capital", "france", "The capital of France is [MASK].", "paris")
    paris, rome = TOKENIZER.vocab["paris"], TOKENIZER.vocab["rome"]
    rows = bench.gap_filling(oracle_mlm(paris), oracle_clm(paris), TOKENIZER,
                             [("train", right), ("train", left)])
    assert [(r["side"], r["mlm"], r["clm"]) for r in rows] == [("right", 1, 1), ("left", 1, 1)]
    rows = bench.gap_filling(oracle_mlm(rome), oracle_clm(rome), TOKENIZER, [("train", right)])
    assert (rows[0]["mlm"], rows[0]["clm"]) == (0, 0)


def test_uniform_models_have_the_vocabulary_as_perplexity():
    def uniform(ids, mask=None):
        return output(np.zeros((*np.shape(ids), V)))

    ids = np.array([TOKENIZER.encode("Paris is the capital of France.") + [0, 0]])
    mask = (ids != 0).astype(np.int64)
    result = bench.next_word(uniform, uniform, TOKENIZER, ids, mask)
    assert result["tokens"] == 7  # the ordinary tokens: no [CLS], [SEP] or padding
    assert np.isclose(result["clm_perplexity"], V)
    assert np.isclose(result["mlm_pseudo_perplexity"], V)


def test_equal_flops_gives_clm_fewer_steps():
    mlm, clm = bench.flops_per_step("mlm"), bench.flops_per_step("clm")
    assert clm > mlm  # the output layer on every position, not on 15% of them
    assert bench.shared.matched_steps(600, mlm, clm) < 600


def test_fact_prompts_ask_true_facts():
    prompts = dict(bench.fact_prompts())
    assert prompts["The capital of France is"] == "paris"
    assert prompts["Paris is the capital of"] == "france"
