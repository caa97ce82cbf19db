"""``python -m tinymlm.generate`` (issue 19): left to right from a causal model (greedy,
sample), mask-predict and Gibbs from a masked one; --json's shape, reproducibility with --seed,
each method's mechanics, and bad input (exit 2, one line on stderr, nothing on stdout).

The models are random tiny ones on tinyworld's vocabulary: what is tested is the procedure,
not the quality of the text.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tinymlm import BertForMaskedLM, BertLMHeadModel, backend
from tinymlm import generate as gen
from tinymlm.data import tinyworld
from tinymlm.objectives import bert_config
from tinymlm.tokenizer import BertTokenizer

PROMPTS = ["The capital of France is", "paris is"]


def save_random(cls, folder):
    tokenizer = BertTokenizer.from_vocab(tinyworld.vocabulary())
    backend.manual_seed(0)
    model = cls(bert_config("tiny", len(tokenizer), 16, dropout=0.0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clm_dir(tmp_path_factory):
    return save_random(BertLMHeadModel, tmp_path_factory.mktemp("clm"))


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    return save_random(BertForMaskedLM, tmp_path_factory.mktemp("mlm"))


def cli(capsys, *argv):
    """(exit status, stdout, stderr) of the command, run in this process."""
    code = gen.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def generated(capsys, *argv):
    code, out, err = cli(capsys, *argv, "--json", *PROMPTS)
    assert code == 0, err
    results = json.loads(out)  # exactly one JSON document on stdout
    assert isinstance(results, list) and len(results) == len(PROMPTS)
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert isinstance(result, list) and len(result) == 1
        assert set(result[0]) == {"generated_text"}
        assert result[0]["generated_text"].startswith(prompt)
    return [r[0]["generated_text"] for r in results]


@pytest.mark.parametrize("kind, method", [("clm", "greedy"), ("clm", "sample"),
                                          ("mlm", "mask-predict"), ("mlm", "gibbs")])
def test_json_shape_and_seeded_reproducibility(capsys, clm_dir, mlm_dir, kind, method):
    folder = clm_dir if kind == "clm" else mlm_dir
    first = generated(capsys, "--model", folder, "--method", method, "--seed", 3)
    assert generated(capsys, "--model", folder, "--method", method, "--seed", 3) == first
    if method in ("sample", "gibbs"):  # the seed is what varies the draws
        assert generated(capsys, "--model", folder, "--method", method, "--seed", 4) != first
    assert any(text != prompt for text, prompt in zip(first, PROMPTS, strict=True))


def test_default_method_comes_from_the_model(capsys, clm_dir, mlm_dir):
    assert generated(capsys, "--model", clm_dir) == generated(
        capsys, "--model", clm_dir, "--method", "sample")
    assert generated(capsys, "--model", mlm_dir) == generated(
        capsys, "--model", mlm_dir, "--method", "mask-predict")


def test_the_function_gives_what_json_prints(capsys, clm_dir, clm):
    model, tok = clm
    printed = generated(capsys, "--model", clm_dir, "--method", "sample", "--seed", 5)
    results = gen.generate(model, tok, PROMPTS, method="sample", seed=5)
    assert [r[0]["generated_text"] for r in results] == printed
    assert gen.generate(model, tok, PROMPTS[0], method="sample", seed=5) == results[:1]


def test_plain_output_is_one_line_per_prompt(capsys, clm_dir):
    code, out, _ = cli(capsys, "--model", clm_dir, "--method", "greedy", *PROMPTS)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith(p) for line, p in zip(lines, PROMPTS))


def test_the_module_runs_as_a_command(clm_dir):
    done = subprocess.run([sys.executable, "-m", "tinymlm.generate", "--model", str(clm_dir),
                           "--json", "--max-new-tokens", "2", "paris is"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0][0]["generated_text"].startswith("paris is")


# --- the methods' mechanics ------------------------------------------------------------------


@pytest.fixture(scope="module")
def clm(clm_dir):
    return BertLMHeadModel.from_pretrained(clm_dir), BertTokenizer.from_pretrained(clm_dir)


@pytest.fixture(scope="module")
def mlm(mlm_dir):
    return BertForMaskedLM.from_pretrained(mlm_dir), BertTokenizer.from_pretrained(mlm_dir)


def scripted(vocab_size, favourites):
    """A stand-in for logits_of: position -1 of call i prefers token favourites[i]."""
    calls = []

    def logits_of(model, ids):
        logits = np.zeros((len(ids), vocab_size))
        logits[:, favourites[len(calls)]] = 5.0
        calls.append(list(ids))
        return logits

    return logits_of, calls


def test_greedy_takes_the_argmax_and_stops_at_sep(clm, monkeypatch):
    model, tok = clm
    ids = tok.encode("paris is")[:-1]
    a, b = tok.vocab["in"], tok.vocab["france"]
    fake, calls = scripted(len(tok), [a, b, tok.sep_token_id, a])
    monkeypatch.setattr(gen, "logits_of", fake)
    new = gen.left_to_right(model, tok, ids, 8, True, 1.0, 0, np.random.default_rng(0))
    assert new == [a, b]  # [SEP] ends the text: two tokens, three forward passes
    assert calls == [ids, ids + [a], ids + [a, b]]


def test_greedy_is_the_real_models_argmax(clm):
    model, tok = clm
    ids = tok.encode("paris is")[:-1]
    new = gen.left_to_right(model, tok, ids, 3, True, 1.0, 0, np.random.default_rng(0))
    for t, token in enumerate(new):
        scores = gen.logits_of(model, ids + new[:t])[-1]
        scores[tok.all_special_ids] = -np.inf
        assert token == int(np.argmax(scores))


def test_sampling_respects_top_k_and_never_writes_special_tokens(clm):
    model, tok = clm
    banned = gen.never_generated(tok, len(tok), allow_sep=False)
    scores = gen.logits_of(model, tok.encode("paris is")[:-1])[-1]
    p = gen.distribution(scores, banned, temperature=0.7, top_k=5)
    assert (p > 0).sum() == 5 and np.isclose(p.sum(), 1.0)
    assert p[banned].sum() == 0
    allowed = np.where(banned, -np.inf, scores)
    np.testing.assert_array_equal(np.sort(np.flatnonzero(p)), np.sort(np.argsort(-allowed)[:5]))


def test_mask_predict_remasks_a_linearly_falling_number(mlm, monkeypatch):
    model, tok = mlm
    calls = []
    real = gen.logits_of

    def spy(model, ids):
        calls.append(sum(i == tok.mask_token_id for i in ids))
        return real(model, ids)

    monkeypatch.setattr(gen, "logits_of", spy)
    ids = tok.encode("paris is")[:-1]
    new = gen.mask_predict(model, tok, ids, 8, iterations=4)
    assert calls == [8, 8 * 3 // 4, 8 * 2 // 4, 8 * 1 // 4]  # n(T - t)/T masks at round t
    assert len(new) == 8 and not set(new) & set(tok.all_special_ids)


def test_mask_predict_in_one_round_is_the_parallel_argmax(mlm):
    model, tok = mlm
    ids = tok.encode("paris is")[:-1]
    new = gen.mask_predict(model, tok, ids, 4, iterations=1)
    seq = ids + [tok.mask_token_id] * 4 + [tok.sep_token_id]
    scores = gen.logits_of(model, seq)[len(ids):len(ids) + 4]  # (4, V)
    scores[:, tok.all_special_ids] = -np.inf
    assert new == scores.argmax(axis=-1).tolist()


def test_gibbs_fills_left_to_right_then_sweeps(mlm, monkeypatch):
    model, tok = mlm
    seen = []
    real = gen.logits_of

    def spy(model, ids):
        seen.append([i for i, t in enumerate(ids) if t == tok.mask_token_id])
        return real(model, ids)

    monkeypatch.setattr(gen, "logits_of", spy)
    ids = tok.encode("paris is")[:-1]
    start, n = len(ids), 3
    new = gen.gibbs(model, tok, ids, n, 2, 1.0, 0, np.random.default_rng(0))
    assert len(new) == n and not set(new) & set(tok.all_special_ids)
    first_fill = [list(range(start + i, start + n)) for i in range(n)]
    assert seen[:n] == first_fill  # each drawn with the masks to its right still there
    sweeps = seen[n:]
    assert len(sweeps) == 2 * n and all(len(m) == 1 for m in sweeps)  # one masked at a time
    for sweep in (sweeps[:n], sweeps[n:]):
        assert sorted(m[0] for m in sweep) == list(range(start, start + n))  # each once
    order = [m[0] for m in sweeps]
    assert order != list(range(start, start + n)) * 2  # a random order, not a fixed scan


# --- bad input -------------------------------------------------------------------------------


def one_line_error(capsys, *argv, says):
    code, out, err = cli(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert says in err, err


@pytest.mark.parametrize("argv, says", [
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--top-k", "-2"], "--top-k"),
    (["--method", "greedy", "--top-k", "3"], "--top-k is a setting of --method sample or gibbs"),
    (["--method", "sample", "--iterations", "3"], "--iterations"),
    (["--method", "mask-predict"], "causal"),
    (["--method", "beam"], "--method"),
    (["--max-new-tokens", "600"], "positions"),
    (["--device", "tpu"], "--device"),
])
def test_bad_settings_for_a_causal_model(capsys, clm_dir, argv, says):
    one_line_error(capsys, "--model", clm_dir, *argv, "paris is", says=says)


@pytest.mark.parametrize("argv, says", [
    (["--method", "greedy"], "needs a causal model"),
    (["--method", "sample"], "needs a causal model"),
    (["--iterations", "0"], "--iterations"),
    (["--temperature", "0.5"], "--temperature is a setting of --method sample or gibbs"),
])
def test_bad_settings_for_a_masked_model(capsys, mlm_dir, argv, says):
    one_line_error(capsys, "--model", mlm_dir, *argv, "paris is", says=says)


def test_bad_models_and_prompts(capsys, clm_dir, tmp_path):
    one_line_error(capsys, "--model", tmp_path / "missing", "paris is", says="no such folder")
    one_line_error(capsys, "--model", tmp_path, "paris is", says="config.json")
    (tmp_path / "config.json").write_text((clm_dir / "config.json").read_text())
    one_line_error(capsys, "--model", tmp_path, "paris is", says="model.safetensors")
    one_line_error(capsys, "--model", clm_dir, "paris is [MASK]", says="fill_mask")
    one_line_error(capsys, "--model", clm_dir, says="prompts")
