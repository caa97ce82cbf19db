"""python -m tinymlm.finetune (issue 8): span decoding, a few steps end to end, and bad input."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from tinymlm import finetune as ft
from tinymlm.data import tasks as task_data
from tinymlm.data import tinyworld
from tinymlm.nn.bert import BertConfig, BertForMaskedLM
from tinymlm.nn.heads import (
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from tinymlm.objectives.finetuning import MAX_ANSWER_TOKENS, best_span
from tinymlm.runs import step_rows
from tinymlm.tokenizer import BertTokenizer

# --- decoding and data order ---------------------------------------------------------------


def test_best_span_is_the_brute_force_best():
    rng = np.random.default_rng(0)
    start, end = rng.normal(size=12), rng.normal(size=12)
    context = np.zeros(12, dtype=bool)
    context[4:11] = True
    spans = [
        (i, j)
        for i, j in itertools.product(range(12), repeat=2)
        if context[i] and context[j] and i <= j < i + MAX_ANSWER_TOKENS
    ]
    assert best_span(start, end, context) == max(spans, key=lambda s: start[s[0]] + end[s[1]])


def test_batches_walk_through_seeded_epochs():
    def rows():
        return np.concatenate([step_rows(0, step, 0, 4, 1, 10) for step in range(1, 6)])

    assert sorted(rows()[:10]) == list(range(10)) and sorted(rows()[10:20]) == list(range(10))
    assert rows().tolist() == rows().tolist()


# --- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A (random) tiny MLM folder with the tinyworld tokenizer, as tinymlm.train writes."""
    tok = BertTokenizer.from_vocab(tinyworld.vocabulary())
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    folder = tmp_path_factory.mktemp("pretrained")
    BertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


FAST = [
    "--steps",
    "4",
    "--batch-size",
    "8",
    "--eval-every",
    "2",
    "--log-every",
    "2",
    "--max-length",
    "48",
]


@pytest.mark.parametrize(
    "task, head",
    [
        ("verify", BertForSequenceClassification),
        ("entities", BertForTokenClassification),
        ("qa", BertForQuestionAnswering),
    ],
)
def test_a_few_steps_from_a_pretrained_folder(tmp_path, pretrained, capsys, task, head):
    out = tmp_path / "run"
    assert ft.main(["--task", task, "--model", str(pretrained), "--out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    final = json.loads(captured.out)
    assert "newly initialised" in captured.err  # the new head is announced
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    assert all({"lr", "tokens_per_s"} <= set(r) for r in rows if "loss" in r)
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and evals[-1]["eval_loss"] == final["eval_loss"]
    assert 0.0 <= final["eval_accuracy"] <= 1.0
    assert (out / "current").resolve().name == "step-0000004"
    assert (out / "loss_curve.png").stat().st_size > 0
    model = head.from_pretrained(out)  # the top level is a model folder: nothing left new
    assert type(model) is head and BertTokenizer.from_pretrained(out).vocab
    if task != "qa":
        assert (
            list(model.id2label.values())
            == {"verify": ["false", "true"], "entities": task_data.ENTITY_TAGS}[task]
        )


def test_user_jsonl_from_scratch_is_reproducible(tmp_path):
    data = tmp_path / "sentiment.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": t, "label": lab}) + "\n"
            for t, lab in [
                ("the cat is happy", "pos"),
                ("the dog is sad", "neg"),
                ("a happy bird", "pos"),
                ("a sad cow", "neg"),
            ]
            * 5
        )
    )
    results = [
        ft.finetune(
            data,
            "none",
            out=tmp_path / f"run{i}",
            steps=3,
            batch_size=4,
            eval_every=3,
            log=lambda msg: None,
            model_size="tiny",
        )
        for i in range(2)
    ]
    assert results[0] == results[1]
    assert results[0]["task"] == "sentiment" and results[0]["step"] == 3


# --- bad input: exit 2 and one line -------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nonsense", "--model", "none"], "neither a built-in task"),
        (["--task", "verify", "--model", "/no/such/folder"], "not a model folder"),
        (["--task", "verify", "--model", "none", "--steps", "0"], "--steps must be a positive"),
        (["--task", "verify", "--model", "none", "--lr", "-1"], "--lr must be a positive"),
        (["--model", "none"], "--task is required"),
        (["--task", "verify", "--model", "none", "--stop-after", "0"], "--stop-after must be"),
        (["--task", "verify", "--model", "none", "--device", "tpu"], "--device"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert ft.main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_a_damaged_jsonl_file_exits_2_from_the_command_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "fine", "label": 1}\n{"text": broken\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinymlm.finetune",
            "--task",
            str(data),
            "--model",
            "none",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "d.jsonl:2 is not valid JSON" in lines[-1]
    assert "Traceback" not in result.stderr


def test_an_existing_run_folder_is_refused(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("keep me")
    assert ft.main(["--task", "verify", "--model", "none", "--out", str(tmp_path / "run")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_resume_of_a_folder_that_is_no_run_exits_2(tmp_path, capsys):
    assert ft.main(["--resume", str(tmp_path)]) == 2
    assert "not a tinymlm run folder (no finetune_config.json)" in capsys.readouterr().err
