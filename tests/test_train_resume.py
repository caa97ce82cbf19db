"""``python -m tinymlm.train`` and ``python -m tinymlm.finetune``: a run stopped with --stop-after
and continued with --resume ends with the very bytes of an uninterrupted run, for MLM, ELECTRA
(issue 8) and fine-tuning (issue 15); the ELECTRA run folder is a BERT encoder that loads in
Hugging Face's format and fine-tunes.

Runs are tiny (6 steps of 4 sequences of 32 tokens) and in-process, so each takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinymlm import finetune
from tinymlm import train as train_module
from tinymlm.autograd import Tensor, no_grad
from tinymlm.nn import functional as F
from tinymlm.nn.bert import BertModel
from tinymlm.objectives import FineTuning, pretraining
from tinymlm.optim import AdamW

TINY_RUN = [
    "--steps",
    "6",
    "--batch-size",
    "4",
    "--max-length",
    "32",
    "--eval-every",
    "3",
    "--save-every",
    "3",
    "--log-every",
    "3",
    "--tinyworld-docs",
    "200",
]
# (the logged loss is a mean over the steps since the last log row; a log row at the stop
# keeps those windows the same in both runs)
TIMINGS = ("tokens_per_s", "gflops_per_s")  # the only things allowed to differ between runs


def run(*argv) -> None:
    assert train_module.main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module", params=["mlm", "electra"])
def runs(request, tmp_path_factory):
    """(objective, uninterrupted run folder, stopped-then-resumed run folder)."""
    objective = request.param
    root = tmp_path_factory.mktemp(objective)
    whole, resumed = root / "whole", root / "resumed"
    with pytest.MonkeyPatch.context() as patch:
        # the fact probes after the last step (480 fill-masks, MLM only) are not under test
        patch.setattr(pretraining, "knowledge_report", lambda *args: {"fact_accuracy": 0.0})
        run(*TINY_RUN, "--objective", objective, "--out", whole)
        run(*TINY_RUN, "--objective", objective, "--out", resumed, "--stop-after", "3")
        stopped = json.loads((resumed / "trainer_state.json").read_text())["step"]
        assert stopped == 3
        run("--resume", resumed)
    return objective, whole, resumed


def test_resume_gives_the_bytes_of_an_uninterrupted_run(runs):
    objective, whole, resumed = runs
    files = sorted(p.name for p in (whole / "current").iterdir())
    expected = {
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
        "vocab.txt",
        "tokenizer_config.json",
    }
    if objective == "electra":
        expected.add("electra.safetensors")  # the generator and the discriminator's head
    assert set(files) == expected
    assert sorted(p.name for p in (resumed / "current").iterdir()) == files
    assert (whole / "current").resolve().name == (resumed / "current").resolve().name
    for name in files:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name


def test_resume_logs_the_same_metrics(runs):
    _, whole, resumed = runs

    def rows(folder: Path):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]

    assert rows(whole) == rows(resumed)
    assert any("eval_loss" in r for r in rows(whole))


def test_resume_refuses_new_settings(runs, capsys):
    _, _, resumed = runs
    assert train_module.main(["--resume", str(resumed), "--objective", "electra"]) == 2
    assert "--resume continues a run" in capsys.readouterr().err


def test_electra_run_folder_is_a_bert_encoder_that_fine_tunes(runs):
    objective, whole, _ = runs
    if objective != "electra":
        pytest.skip("the ELECTRA run folder only")
    metrics = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert {"eval_rtd_accuracy", "eval_rtd_loss"} <= set(metrics[-1])
    config = json.loads((whole / "config.json").read_text())
    assert config["architectures"] == ["BertModel"]

    encoder = BertModel.from_pretrained(whole)  # the discriminator, at the top of the folder
    encoder.train()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, config["vocab_size"], size=(8, 12))
    mask = np.ones_like(ids)
    mask[4:, 9:] = 0
    classes = rng.integers(0, 2, size=8)
    head = Tensor(
        rng.standard_normal((2, config["hidden_size"])).astype(np.float32) * 0.02,
        requires_grad=True,
    )
    optimizer = AdamW([*encoder.parameters(), head], lr=1e-3)

    def loss():
        cls = encoder(ids, mask).last_hidden_state[:, 0]  # (B, H) the [CLS] vectors
        return F.cross_entropy(F.linear(cls, head), classes)

    losses = []
    for _ in range(8):  # a sequence-classification fine-tune: the loss must come down
        value = loss()
        losses.append(value.item())
        value.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < 0.5 * losses[0]

    # and the fine-tuning command takes the run folder as it takes an MLM one
    out = whole.parent / "finetuned"
    argv = [
        "--task",
        "verify",
        "--model",
        whole,
        "--out",
        out,
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--eval-every",
        "2",
        "--log-every",
        "2",
        "--max-length",
        "48",
    ]
    assert finetune.main([str(a) for a in argv]) == 0
    assert (out / "config.json").is_file()

    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    theirs = transformers.BertModel.from_pretrained(whole, add_pooling_layer=False).eval()
    ours = BertModel.from_pretrained(whole)
    with torch.no_grad(), no_grad():
        expected = ours(ids, mask).last_hidden_state.data
        got = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    np.testing.assert_allclose(got.last_hidden_state.numpy(), expected, atol=1e-5, rtol=1e-5)


# --- fine-tuning ---------------------------------------------------------------------------------

FINETUNE_RUN = ["--steps", "6", "--batch-size", "8", "--max-length", "48", "--eval-every", "3",
                "--log-every", "3", "--warmup-steps", "2"]


@pytest.fixture(scope="module", params=["verify", "qa"])
def finetune_runs(request, tmp_path_factory):
    """(uninterrupted fine-tuning run folder, stopped-then-resumed one), from a random encoder
    with dropout, so the dropout seeds are under test too."""
    root = tmp_path_factory.mktemp(f"finetune-{request.param}")
    whole, resumed = root / "whole", root / "resumed"
    task = ["--task", request.param, "--model", "none", *FINETUNE_RUN]

    def finetune_main(*argv):
        assert finetune.main([str(a) for a in argv]) == 0

    finetune_main(*task, "--out", whole)
    finetune_main(*task, "--out", resumed, "--stop-after", "4")  # between two checkpoints
    assert json.loads((resumed / "trainer_state.json").read_text())["step"] == 4
    finetune_main("--resume", resumed)
    return whole, resumed


def test_finetune_resume_gives_the_bytes_of_an_uninterrupted_run(finetune_runs, capsys):
    whole, resumed = finetune_runs
    files = sorted(p.name for p in (whole / "current").iterdir())
    assert {"model.safetensors", "optimizer.safetensors", "trainer_state.json"} <= set(files)
    assert sorted(p.name for p in (resumed / "current").iterdir()) == files
    for name in files:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name

    def rows(folder: Path):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]

    assert rows(whole) == rows(resumed)
    assert [r["step"] for r in rows(whole) if "eval_loss" in r] == [3, 6]


def test_finetune_resume_refuses_new_settings(finetune_runs, capsys):
    _, resumed = finetune_runs
    assert finetune.main(["--resume", str(resumed), "--lr", "0.1"]) == 2
    assert "--resume continues a run" in capsys.readouterr().err


def test_finetune_ctrl_c_saves_the_last_step_and_resumes_to_the_same_bytes(
    finetune_runs, tmp_path, monkeypatch
):
    whole, _ = finetune_runs
    config = json.loads((whole / "finetune_config.json").read_text())
    interrupted = tmp_path / "interrupted"
    real_batch = FineTuning.batch

    def batch(self, step, micro):
        if step == 5:  # Ctrl-C during step 5: step 4 is the last one done
            raise KeyboardInterrupt
        return real_batch(self, step, micro)

    monkeypatch.setattr(FineTuning, "batch", batch)
    argv = ["--task", config["task"], "--model", "none", *FINETUNE_RUN, "--out", interrupted]
    with pytest.raises(SystemExit) as stopped:
        finetune.main([str(a) for a in argv])
    assert stopped.value.code == 130
    assert json.loads((interrupted / "trainer_state.json").read_text())["step"] == 4
    monkeypatch.setattr(FineTuning, "batch", real_batch)
    assert finetune.main(["--resume", str(interrupted)]) == 0
    for name in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        assert (whole / name).read_bytes() == (interrupted / name).read_bytes(), name
