"""``python -m tinymlm.train --objective clm`` (issue 19): the causal twin trains with the same
trainer and data, its loss falls, and --stop-after + --resume end with the bytes of an
uninterrupted run. The run folder is a ``BertLMHeadModel`` folder (is_decoder).

Runs are tiny (8 steps of 4 sequences of 32 tokens) and in-process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinymlm import BertLMHeadModel
from tinymlm import train as train_module
from tinymlm.objectives import PRETRAINING
from tinymlm.objectives.causal import CausalLanguageModeling, next_token_batch

TINY_RUN = ["--objective", "clm", "--steps", "8", "--batch-size", "4", "--max-length", "32",
            "--warmup-steps", "1", "--lr", "3e-3", "--eval-every", "4", "--save-every", "4",
            "--log-every", "2", "--tinyworld-docs", "200"]
TIMINGS = ("tokens_per_s", "gflops_per_s")  # the only things allowed to differ between runs


def run(*argv) -> None:
    assert train_module.main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(uninterrupted run folder, stopped-then-resumed run folder)."""
    root = tmp_path_factory.mktemp("clm")
    whole, resumed = root / "whole", root / "resumed"
    run(*TINY_RUN, "--out", whole)
    run(*TINY_RUN, "--out", resumed, "--stop-after", "4")
    assert json.loads((resumed / "trainer_state.json").read_text())["step"] == 4
    run("--resume", resumed)
    return whole, resumed


def rows(folder):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]


def test_clm_is_offered():
    assert PRETRAINING["clm"] is CausalLanguageModeling


def test_labels_are_the_ids_with_padding_ignored():
    ids = np.array([[2, 7, 8, 3, 0]])
    mask = np.array([[1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(next_token_batch(ids, mask)["labels"], [[2, 7, 8, 3, -100]])


def test_resume_gives_the_bytes_of_an_uninterrupted_run(runs):
    whole, resumed = runs
    files = sorted(p.name for p in (whole / "current").iterdir())
    assert "model.safetensors" in files and "optimizer.safetensors" in files
    assert sorted(p.name for p in (resumed / "current").iterdir()) == files
    for name in files:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    assert rows(whole) == rows(resumed)


def test_the_loss_falls(runs):
    whole, _ = runs
    losses = [r["loss"] for r in rows(whole) if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5, losses
    evals = [r["eval_loss"] for r in rows(whole) if "eval_loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0], evals


def test_the_run_folder_is_a_causal_model(runs):
    whole, _ = runs
    config = json.loads((whole / "config.json").read_text())
    assert config["architectures"] == ["BertLMHeadModel"] and config["is_decoder"] is True
    model = BertLMHeadModel.from_pretrained(whole)
    assert model.bert.encoder.layer[0].attention.self.is_causal
