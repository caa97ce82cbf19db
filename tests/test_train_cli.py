"""The command lines' contracts: bad input exits 2 with one line, checkpoints survive a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "2", "--batch-size", "4", "--max-length", "32", "--tinyworld-docs", "120",
        "--eval-every", "1", "--save-every", "1", "--log-every", "1"]


def run(module: str, *args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def assert_usage_error(result, *words):
    """Exit status 2, no traceback, and a message naming what is wrong."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error:"), result.stderr
    for word in words:
        assert word.lower() in message.lower(), message


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = run("tinymlm.train", *TINY, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def test_run_folder_is_complete(trained):
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json",
                 "train_config.json", "trainer_state.json", "metrics.jsonl", "loss_curve.png"):
        assert (trained / name).is_file(), name
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2]
    for r in train_rows:
        assert {"step", "loss", "lr", "tokens_per_s"} <= set(r) and np.isfinite(r["loss"])
    assert any("eval_loss" in r and "eval_accuracy" in r for r in rows)


def test_fill_mask_json_shape(trained):
    result = run("tinymlm.fill_mask", "--model", trained, "--json", "--top-k", "3",
                 "Paris is the capital of [MASK].", "The [MASK] sat on the [MASK].")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(out) == 2
    one, two = out
    assert len(one) == 3 and set(one[0]) == {"score", "token", "token_str", "sequence"}
    assert [c["score"] for c in one] == sorted((c["score"] for c in one), reverse=True)
    assert len(two) == 2 and all(len(per_mask) == 3 for per_mask in two)


def test_fill_mask_matches_python_function(trained):
    from tinymlm.fill_mask import fill_mask
    from tinymlm.nn.bert import BertForMaskedLM
    from tinymlm.tokenizer import BertTokenizer

    text = "The cat sat on the [MASK]."
    expected = fill_mask(BertForMaskedLM.from_pretrained(trained),
                         BertTokenizer.from_pretrained(trained), [text], top_k=5)
    result = run("tinymlm.fill_mask", "--model", trained, "--json", text)
    got = json.loads(result.stdout)
    assert [c["token"] for c in got[0]] == [c["token"] for c in expected[0]]
    np.testing.assert_allclose([c["score"] for c in got[0]], [c["score"] for c in expected[0]],
                               rtol=1e-6)


def test_fill_mask_warns_past_the_trained_length(trained):
    long = "The cat sat on the [MASK]. " + "It was a sunny day. " * 8  # > 32 tokens
    result = run("tinymlm.fill_mask", "--model", trained, "--json", long,
                 "The cat sat on the [MASK].")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "at most 32" in warnings[0]
    assert len(json.loads(result.stdout)) == 2  # still answered


def test_fill_mask_bad_input(trained, tmp_path):
    assert_usage_error(run("tinymlm.fill_mask", "--model", trained, "no mask here"), "[MASK]")
    assert_usage_error(run("tinymlm.fill_mask", "--model", tmp_path / "nowhere", "a [MASK]."),
                       "config.json")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        (damaged / name).write_bytes((trained / name).read_bytes())
    (damaged / "model.safetensors").write_bytes((trained / "model.safetensors").read_bytes()[:100])
    assert_usage_error(run("tinymlm.fill_mask", "--model", damaged, "a [MASK]."), "damaged")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--steps", "-3"], ["--steps"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--lr", "-1"], ["--lr"]),
        (["--corpus", "/no/such/file.txt"], ["not found"]),
    ],
)
def test_train_bad_options(tmp_path, args, words):
    assert_usage_error(run("tinymlm.train", *args, "--out", tmp_path / "r"), *words)
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_train_bad_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n")
    assert_usage_error(run("tinymlm.train", "--corpus", empty, "--out", tmp_path / "a"), "empty")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 20)
    assert_usage_error(run("tinymlm.train", "--corpus", binary, "--out", tmp_path / "b"),
                       "utf-8")


def test_salient_masking_needs_tinyworld(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("Some real text. " * 50)
    result = run("tinymlm.train", "--corpus", text, "--masking", "salient", "--out", tmp_path / "r")
    assert_usage_error(result, "salient", "tinyworld")


def test_auto_masking_is_salient_for_mlm_on_tinyworld_only():
    from tinymlm.data import tinyworld
    from tinymlm.objectives import TrainConfig, make_collator
    from tinymlm.tokenizer import BertTokenizer

    tok = BertTokenizer.from_vocab(tinyworld.vocabulary())
    collator = make_collator(TrainConfig(), tok)
    assert collator.strategy == "salient"
    assert collator.is_salient[tok.vocab["paris"]] and collator.is_salient[tok.vocab["france"]]
    assert not collator.is_salient[tok.vocab["the"]]
    assert make_collator(TrainConfig(objective="electra"), tok).strategy == "token"
    assert make_collator(TrainConfig(corpus=["some.txt"]), tok).strategy == "token"
    assert make_collator(TrainConfig(masking="span"), tok).strategy == "span"


def test_existing_run_folder_needs_resume(trained):
    assert_usage_error(run("tinymlm.train", *TINY, "--out", trained), "--resume")


def test_resume_takes_no_settings(trained):
    assert_usage_error(run("tinymlm.train", "--resume", trained, "--lr", "1"), "--resume")


def test_resume_of_a_damaged_run(trained, tmp_path):
    assert_usage_error(run("tinymlm.train", "--resume", tmp_path), "train_config.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train_config.json").write_bytes((trained / "train_config.json").read_bytes())
    assert_usage_error(run("tinymlm.train", "--resume", broken), "checkpoint")


KILL_DURING_SAVE = """
import os, sys
from pathlib import Path
import tinymlm.fileio as fileio
import tinymlm.train as train
import tinymlm.trainer as trainer

real_write = fileio.atomic_write_bytes

def dying_write(path, data):
    # Die like a killed process half-way through the checkpoint of step 2: its model is
    # written, its optimizer state only half (to the file's temporary name or in place).
    if "step-0000002" in str(path) and "optimizer" in str(path):
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        os._exit(9)
    real_write(path, data)

trainer.atomic_write_bytes = dying_write  # what the trainer writes the optimizer state with
sys.exit(train.main(sys.argv[2:] + ["--out", sys.argv[1]]))
"""


def test_killed_while_saving_keeps_previous_checkpoint(tmp_path):
    """A process that dies while writing step 2's checkpoint leaves step 1's loadable."""
    from tinymlm.nn.bert import BertForMaskedLM

    script = tmp_path / "die.py"
    script.write_text(KILL_DURING_SAVE)
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(script), str(run_dir), *TINY], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 9, result.stderr
    assert os.readlink(run_dir / "current").endswith("step-0000001")
    assert json.loads((run_dir / "trainer_state.json").read_text())["step"] == 1
    assert BertForMaskedLM.from_pretrained(run_dir).num_parameters() > 0
    resumed = run("tinymlm.train", "--resume", run_dir)  # and the run goes on from step 1
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "trainer_state.json").read_text())["step"] == 2
