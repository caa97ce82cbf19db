"""Contrastive training (issue 20): InfoNCE with in-batch negatives turns an encoder into a
sentence encoder, run by the Trainer through ``python -m tinymlm.finetune --task retrieval``.

The loss is checked against its formula written out and by a float64 gradient check (the
learned temperature included); a few steps on tinyworld's question -> sentence pairs raise
recall@1 far above chance and cut the search loss by more than a nat; the run folder loads as a
SentenceEncoder and, through transformers with sentence-transformers' pooling, gives the same
embeddings; a stopped and resumed run ends with the bytes of an uninterrupted one.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tinymlm
from tinymlm.autograd import Tensor
from tinymlm.finetune import main as finetune_main
from tinymlm.gradcheck import gradcheck
from tinymlm.objectives.contrastive import (
    ContrastiveConfig,
    ContrastiveTraining,
    RetrievalData,
    info_nce,
    retrieval_metrics,
    tinyworld_pairs,
)
from tinymlm.sentence_encoder import SentenceEncoder, l2_normalize

# --- the loss and the metrics ------------------------------------------------------------------


def info_nce_written_out(u, v, scale, exclude):
    total = 0.0
    for i in range(len(u)):
        logits = [scale * float(u[i] @ v[j]) for j in range(len(v)) if not exclude[i, j]]
        mine = scale * float(u[i] @ v[i])
        total += -mine + math.log(sum(math.exp(x) for x in logits))
    return total / len(u)


def test_info_nce_is_its_formula():
    rng = np.random.default_rng(0)
    u, v = l2_normalize(rng.standard_normal((2, 5, 8)))
    exclude = np.zeros((5, 5), bool)
    exclude[0, 3] = exclude[3, 0] = True  # rows 0 and 3 share a passage
    for mask in (np.zeros((5, 5), bool), exclude):
        got = info_nce(Tensor(u), Tensor(v), 20.0, mask).item()
        assert got == pytest.approx(info_nce_written_out(u, v, 20.0, mask), rel=1e-12)


def test_info_nce_gradients_in_float64_with_a_learned_temperature():
    rng = np.random.default_rng(1)
    u = Tensor(rng.standard_normal((4, 6)), requires_grad=True)
    v = Tensor(rng.standard_normal((4, 6)), requires_grad=True)
    log_scale = Tensor(np.array([math.log(1 / 0.3)]), requires_grad=True)
    exclude = np.zeros((4, 4), bool)
    exclude[1, 2] = True

    def loss(u, v, log_scale):
        return info_nce(l2_normalize(u), l2_normalize(v), log_scale.exp(), exclude)

    result = gradcheck(loss, [u, v, log_scale])
    assert result.ok, str(result)


def test_retrieval_metrics():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.5, 0.5, 0.1]])
    gold = [[0], [0], [1]]  # ranks 1, 3 and 2 (a tie goes to the earlier passage)
    got = retrieval_metrics(scores, gold)
    assert got == pytest.approx({"recall@1": 1 / 3, "recall@5": 1.0,
                                 "mrr": (1 + 1 / 3 + 1 / 2) / 3})


# --- the data -------------------------------------------------------------------------------


def test_tinyworld_pairs_ask_in_held_out_phrasings_and_know_the_answers():
    data = tinyworld_pairs(seed=0)
    train_queries = {q for q, _ in data.train}
    assert len(data.train) > 1000 and not train_queries & set(data.eval_queries)
    assert {p for _, p in data.train} <= set(data.eval_passages)
    for query, gold in zip(data.eval_queries, data.eval_gold):
        assert gold, query
    capital = data.eval_queries.index("Name the capital city of Japan.")
    assert "Tokyo is the capital of Japan." in [data.eval_passages[i]
                                                for i in data.eval_gold[capital]]
    assert tinyworld_pairs(seed=0).train == data.train


def small(data: RetrievalData, queries: int = 60, others: int = 400) -> RetrievalData:
    """Some queries, searched among their right passages and other random ones (fast)."""
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(data.eval_queries), queries, replace=False)
    keep = sorted({i for q in chosen for i in data.eval_gold[q]}
                  | set(rng.choice(len(data.eval_passages), others, replace=False).tolist()))
    row = {old: new for new, old in enumerate(keep)}
    return RetrievalData(data.name, data.train, [data.eval_queries[q] for q in chosen],
                         [data.eval_passages[i] for i in keep],
                         [[row[i] for i in data.eval_gold[q]] for q in chosen])


def test_batches_hold_queries_then_passages_and_mask_duplicates():
    objective = ContrastiveTraining(ContrastiveConfig(batch_size=8, max_length=32), log=None)
    batch = objective.batch(step=3, micro=0)
    assert batch["input_ids"].shape[0] == 16 and batch["exclude"].shape == (8, 8)
    tok = objective.tokenizer
    texts = [tok.decode(ids[mask == 1][1:-1]) for ids, mask in
             zip(batch["input_ids"], batch["attention_mask"])]  # as the tokenizer reads them
    pairs = {(tok.decode(tok.encode(q)[1:-1]), tok.decode(tok.encode(p)[1:-1]))
             for q, p in objective.task.train}
    assert all((q, p) in pairs for q, p in zip(texts[:8], texts[8:]))  # row i + 8 answers i
    passages = texts[8:]
    for i in range(8):
        for j in range(8):
            assert batch["exclude"][i, j] == (i != j and passages[i] == passages[j])
    np.testing.assert_array_equal(objective.batch(3, 0)["input_ids"], batch["input_ids"])


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("simcse", [False, True])
def test_a_few_steps_raise_recall_above_the_untrained_encoder(simcse, tmp_path):
    from tinymlm.finetune import loop_settings
    from tinymlm.trainer import Trainer

    cfg = ContrastiveConfig(steps=20, batch_size=32, max_length=32, eval_every=20,
                            log_every=10, simcse=simcse, lr=2e-3)
    objective = ContrastiveTraining(cfg, log=lambda *_: None, data=small(tinyworld_pairs()))
    chance = np.mean([len(g) for g in objective.task.eval_gold]) / len(
        objective.task.eval_passages)
    before = objective.evaluate(objective.build_model())
    after = Trainer(objective, loop_settings(cfg), tmp_path, log=lambda *_: None).fit()
    print(f"simcse={simcse} chance {chance:.3f}, recall@1 before {before['eval_accuracy']:.3f}, "
          f"after {after['eval_accuracy']:.3f}; search loss before {before['eval_loss']:.2f}, "
          f"after {after['eval_loss']:.2f}")
    # An untrained encoder already matches words (recall@1 0.8-0.9 here: questions name their
    # subject), so recall@1 alone cannot show learning; the search loss can: it measures how
    # sharply the right passages win. Seen: chance 0.013-0.014, search loss 4.1 -> 1.2-1.3.
    assert after["eval_accuracy"] > 10 * chance
    assert after["eval_loss"] < before["eval_loss"] - 1


# --- the command line and the run folder ---------------------------------------------------------


@pytest.fixture
def pairs(tmp_path):
    data = tinyworld_pairs(seed=0)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"query": q, "passage": p}) + "\n"
                            for q, p in data.train[:200]))
    return path


def run(capsys, *argv):
    status = finetune_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_run_folder_is_a_sentence_encoder_that_transformers_reads(pairs, tmp_path, capsys):
    out_dir = tmp_path / "run"
    status, out, _ = run(capsys, "--task", pairs, "--model", "none", "--steps", 3,
                         "--eval-every", 3, "--batch-size", 8, "--out", out_dir,
                         "--pooling", "mean")
    assert status == 0 and json.loads(out)["step"] == 3
    encoder = tinymlm.SentenceEncoder.from_pretrained(out_dir)
    texts = ["What is the capital of Japan?", "Tokyo is the capital of Japan.", "Cats purr."]
    ours = encoder.encode(texts)
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    model = transformers.AutoModel.from_pretrained(out_dir).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=encoder.max_seq_length,
                return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, S, H)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, S, 1)
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-5)
    try:
        import sentence_transformers
    except ImportError:
        return
    st = sentence_transformers.SentenceTransformer(str(out_dir), device="cpu")
    np.testing.assert_allclose(st.encode(texts), ours, atol=1e-5)


def test_stopped_and_resumed_equals_uninterrupted(pairs, tmp_path, capsys):
    common = ["--task", pairs, "--model", "none", "--steps", 4, "--eval-every", 2,
              "--batch-size", 8, "--learn-temperature", "--temperature", 0.1]
    assert run(capsys, *common, "--out", tmp_path / "whole")[0] == 0
    assert run(capsys, *common, "--out", tmp_path / "parts", "--stop-after", 2)[0] == 0
    assert run(capsys, "--resume", tmp_path / "parts")[0] == 0
    for name in ("model.safetensors", "contrastive.json", "optimizer.safetensors"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "parts" / name).read_bytes()
    state = json.loads((tmp_path / "whole" / "contrastive.json").read_text())
    assert state["learned"] and state["temperature"] != 0.1  # it moved


@pytest.mark.parametrize("argv, says", [
    (["--task", "verify", "--temperature", "0.1"], "--temperature is for --task retrieval"),
    (["--task", "retrieval", "--temperature", "0"], "--temperature must be"),
    (["--task", "retrieval", "--batch-size", "1"], "at least 2"),
    (["--task", "{bad}", "--task-type", "retrieval"], "a pair is"),
    (["--task", "{one}"], "1 pair"),
])
def test_bad_input_exits_2_with_one_line(argv, says, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"query": "q", "answer": "a"}\n')
    (tmp_path / "one.jsonl").write_text('{"query": "q", "passage": "p"}\n')
    argv = [a.format(bad=tmp_path / "bad.jsonl", one=tmp_path / "one.jsonl") for a in argv]
    status, out, err = run(capsys, *argv, "--model", "none", "--out", tmp_path / "run")
    assert status == 2 and out == "" and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "run").exists()


def test_saved_model_reloads_with_its_temperature(tmp_path):
    cfg = ContrastiveConfig(learn_temperature=True, temperature=0.07, max_length=32)
    objective = ContrastiveTraining(cfg, log=None)
    model = objective.build_model()
    model.log_scale.data[:] = np.float32(2.5)
    objective.save(model, tmp_path)
    from tinymlm.objectives.contrastive import ContrastiveModel

    loaded = ContrastiveModel.from_pretrained(tmp_path)
    assert loaded.log_scale.data.tolist() == [np.float32(2.5)]
    assert SentenceEncoder.from_pretrained(tmp_path).max_seq_length == 32
