"""benchmarks/beyond_mlm.py (issue 8): FLOPs matching, the commands it runs, aggregation, the
table and the report, and the whole experiment's plumbing with the runs faked."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from tinymlm import finetune as ft
from tinymlm import train
from tinymlm.data import tinyworld
from tinymlm.nn.bert import BertConfig
from tinymlm.nn.electra import generator_config
from tinymlm.objectives import MODEL_SIZES, TrainConfig, build_corpus, train_flops

ROOT = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("beyond_mlm", ROOT / "benchmarks/beyond_mlm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bm = _load()


# --- compute accounting ----------------------------------------------------------------------


def test_flops_per_step_is_the_trainers_formula_for_both_objectives():
    P = bm.PRETRAIN
    layers, hidden = MODEL_SIZES[P["model-size"]]
    config = BertConfig(
        vocab_size=len(tinyworld.vocabulary()),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
    )
    B, S = P["batch-size"] * P["grad-accum"], P["max-length"]
    masked = round(P["mlm-probability"] * B * S)
    mlm = train_flops(config, B, S, masked)
    generator = generator_config(config, bm.ELECTRA["generator-size"])
    electra = train_flops(config, B, S, 0) + train_flops(generator, B, S, masked)
    assert bm.flops_per_step("mlm") == pytest.approx(mlm, rel=1e-12)
    assert bm.flops_per_step("electra") == pytest.approx(electra, rel=1e-12)


@pytest.mark.parametrize("mlm_steps", [1, 7, 200, 600])
@pytest.mark.parametrize("ratio", [0.31, 0.995, 1.0, 1.7])
def test_matched_steps_spend_the_same_flops_to_half_a_step(mlm_steps, ratio):
    mlm_flops, electra_flops = 5.4e9, 5.4e9 * ratio
    steps = bm.matched_steps(mlm_steps, mlm_flops, electra_flops)
    error = abs(steps * electra_flops - mlm_steps * mlm_flops)
    # no other whole number of steps comes closer (and at least one step is always run)
    assert error <= min(abs(s * electra_flops - mlm_steps * mlm_flops) for s in range(1, 2000))
    assert steps >= 1


def test_matched_steps_rejects_nonsense():
    with pytest.raises(ValueError):
        bm.matched_steps(0, 1.0, 1.0)
    with pytest.raises(ValueError):
        bm.matched_steps(10, 1.0, 0.0)


def test_flops_from_metrics_rebuilds_the_total_whatever_the_timing():
    rng = np.random.default_rng(0)
    tokens_per_step, per_step = 2048, rng.uniform(5e9, 6e9, size=35)  # FLOPs of each step
    rows, previous = [], 0
    for step in [10, 20, 30, 35]:  # the last window is short, as at the end of a run
        seconds = rng.uniform(1, 30)
        flops = per_step[previous:step].sum()
        rows.append(
            {
                "step": step,
                "loss": 1.0,
                "tokens_per_s": (step - previous) * tokens_per_step / seconds,
                "gflops_per_s": flops / seconds / 1e9,
            }
        )
        rows.append({"step": step, "eval_loss": 1.0})  # eval rows are not training
        previous = step
    assert bm.flops_from_metrics(rows, tokens_per_step) == pytest.approx(per_step.sum(), rel=1e-9)
    assert bm.flops_from_metrics([], tokens_per_step) == 0.0


def test_unigram_loss_is_the_entropy_of_the_ordinary_tokens():
    small = {**bm.PRETRAIN, "tinyworld-docs": 60}
    loss = bm.unigram_loss(small, seed=0)
    corpus = build_corpus(TrainConfig(max_length=32, tinyworld_docs=60), print)
    ids = corpus.train_ids[corpus.train_mask == 1]
    counts = np.array(
        [c for t, c in zip(*np.unique(ids, return_counts=True))
         if t not in corpus.tokenizer.all_special_ids], dtype=np.float64,
    )  # fmt: skip
    p = counts / counts.sum()
    assert loss == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)
    assert 0 < loss < np.log(len(counts))  # below the uniform distribution's entropy


# --- the commands ----------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["mlm", "electra"])
def test_pretrain_command_parses_to_every_recipe_setting(objective, tmp_path):
    command = bm.pretrain_command(objective, seed=3, steps=17, out=tmp_path / "run")
    assert command[1:3] == ["-m", "tinymlm.train"]
    args = vars(train.parse_args(command[3:]))
    expected = {**bm.PRETRAIN, "objective": objective, "steps": 17, "seed": 3}
    if objective == "electra":
        expected.update(bm.ELECTRA)
    for key, value in expected.items():
        want = [value] if key == "corpus" else value  # --corpus takes a list
        assert args[key.replace("-", "_")] == want, key
    if objective == "mlm":  # the trainer refuses ELECTRA's options for MLM
        assert args["generator_size"] is None and args["electra_weight"] is None
    assert args["out"] == str(tmp_path / "run")


def test_finetune_command_parses_to_every_setting(tmp_path):
    command = bm.finetune_command("qa", "none", seed=2, steps=9, out=tmp_path / "ft")
    assert command[1:3] == ["-m", "tinymlm.finetune"]
    args = vars(ft.parse_args(command[3:]))
    for key, value in {**bm.FINETUNE, "steps": 9, "seed": 2, "eval-every": 9}.items():
        assert args[key.replace("-", "_")] == value, key
    assert (args["task"], args["model"]) == ("qa", "none")
    assert bm.shown(command).startswith("python -m tinymlm.finetune --task qa --model none")


# --- aggregation, table, findings ------------------------------------------------------------


def _scores(values: dict) -> list[dict]:
    """Rows as the experiment makes them from {(task, model): [per-seed main metric]}."""
    rows = []
    for (task, model), per_seed in values.items():
        key = bm.TASK_METRICS[task][0][0]
        for seed, v in enumerate(per_seed):
            rows.append({"seed": seed, "task": task, "model": model, key: v})
    return rows


def test_aggregate_gives_mean_and_sample_std_per_task_metric_and_model():
    values = {("verify", "mlm"): [0.5, 0.7, 0.6], ("verify", "none"): [0.4], ("qa", "none"): [0.2]}
    table = bm.aggregate(_scores(values))
    cell = table["verify"]["eval_accuracy"]["mlm"]
    assert cell["mean"] == pytest.approx(np.mean([0.5, 0.7, 0.6]))
    assert cell["std"] == pytest.approx(np.std([0.5, 0.7, 0.6], ddof=1))
    assert cell["n"] == 3 and cell["values"] == [0.5, 0.7, 0.6]
    assert table["verify"]["eval_accuracy"]["none"]["std"] == 0.0  # one seed: no spread
    assert "electra" not in table["verify"]["eval_accuracy"]
    assert "entities" not in table


def test_table_marks_the_best_mean_and_shows_missing_models():
    values = {("verify", "mlm"): [0.8, 0.9], ("verify", "none"): [0.5, 0.5]}
    text = bm.format_table(bm.aggregate(_scores(values)))
    lines = text.splitlines()
    assert lines[0] == "| task | metric | mlm | electra | none |"
    (row,) = [line for line in lines if line.startswith("| verify")]
    mean, std = statistics.fmean([0.8, 0.9]), statistics.stdev([0.8, 0.9])
    assert f"**{mean:.3f} ± {std:.3f}**" in row and "| — |" in row and "0.500 ± 0.000" in row
    assert "**0.500" not in row


def test_findings_separate_real_gaps_from_seed_noise():
    values = {
        ("verify", "mlm"): [0.90, 0.92],  # far above none
        ("verify", "electra"): [0.50, 0.58],  # within none's spread
        ("verify", "none"): [0.50, 0.56],
    }
    (sentence,) = bm.findings(bm.aggregate(_scores(values)))
    assert "MLM +0.380 (better)" in sentence
    assert "ELECTRA +0.010 (within the seeds' spread)" in sentence
    assert "ELECTRA − MLM -0.370 (MLM ahead)" in sentence


# --- the whole experiment, runs faked --------------------------------------------------------


def _fake_runs(commands, logs, jobs, env):
    """Stand-in for run_commands: writes what the trainer would and prints what finetune
    prints, with a score that depends on the encoder, so the wiring can be checked."""
    out = []
    for command, log in zip(commands, logs):
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text("ok\n")
        run_dir = Path(command[command.index("--out") + 1])
        run_dir.mkdir(parents=True)
        steps = int(command[command.index("--steps") + 1])
        if command[2] == "tinymlm.train":
            rows = [
                {"step": steps, "loss": 3.0, "tokens_per_s": 1000.0, "gflops_per_s": 2.0},
                {"step": steps, "eval_loss": 2.5, "eval_accuracy": 0.4},
            ]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            out.append({"wall_s": 1.0, "stdout": ""})
        else:
            model = command[command.index("--model") + 1]
            score = 0.9 if "mlm" in model else 0.7 if "electra" in model else 0.5
            seed = int(command[command.index("--seed") + 1])
            metrics = {"eval_accuracy": score + 0.01 * seed, "eval_entity_f1": score,
                       "eval_f1": score, "eval_exact_match": score}  # fmt: skip
            out.append({"wall_s": 1.0, "stdout": "progress\n" + json.dumps(metrics) + "\n"})
    return out


def test_experiment_writes_report_plot_and_json(tmp_path, monkeypatch):
    monkeypatch.setattr(bm, "run_commands", _fake_runs)
    monkeypatch.setattr(bm, "unigram_loss", lambda pretrain, seed: 4.5)  # builds a corpus
    results = tmp_path / "results"
    result = bm.experiment([0, 1], 5, 3, tmp_path / "work", results, jobs=1, log=lambda m: None)
    assert len(result["commands"]) == 2 * 2 + 2 * 3 * 3
    assert {(s["task"], s["model"]) for s in result["scores"]} == {
        (t, m) for t in bm.TASKS for m in bm.MODELS
    }
    verify = result["table"]["verify"]["eval_accuracy"]
    assert verify["mlm"]["mean"] == pytest.approx(0.905)
    assert verify["none"]["std"] == pytest.approx(statistics.stdev([0.5, 0.51]))
    # the fake trainer logged 2 GFLOP/s at 1000 tok/s over `steps` steps of B·S tokens
    B, S = bm.PRETRAIN["batch-size"], bm.PRETRAIN["max-length"]
    (mlm0,) = [p for p in result["pretraining"] if p["seed"] == 0 and p["objective"] == "mlm"]
    assert mlm0["flops"] == pytest.approx(2e9 * 5 * B * S / 1000)
    report = (results / "beyond_mlm.md").read_text()
    assert bm.format_table(result["table"]) in report
    assert "## What it shows" in report and "python -m tinymlm.finetune --task qa" in report
    assert (results / "beyond_mlm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((results / "beyond_mlm.json").read_text())
    assert saved["steps"] == result["steps"] and len(saved["scores"]) == 18

    # --rewrite-report rebuilds the report from the JSON alone, with the notes added
    notes = tmp_path / "notes.md"
    notes.write_text("A hand-written reading of the numbers.")
    (results / "beyond_mlm.md").unlink()
    assert bm.main(["--rewrite-report", "--results", str(results), "--notes", str(notes)]) == 0
    assert "A hand-written reading of the numbers." in (results / "beyond_mlm.md").read_text()
