"""Output where people expect it (issue 24): what a run found on stdout, its progress on
stderr; the loss plot in two panels whose curves say how their tokens were masked."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt

from tests.test_train_cli import TINY, run
from tinymlm.runs import plot_curves


def test_results_on_stdout_progress_on_stderr(tmp_path):
    result = run("tinymlm.train", *TINY, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    out, err = result.stdout, result.stderr
    assert "held-out fact accuracy" in out and "[expected france]" in out
    assert out.strip().splitlines()[-1].startswith("final, step 2: held-out loss")
    assert "run folder" in err and "step 2: held-out loss" in err and "done in" in err
    for progress in ("run folder", "MLM pretraining", "done in"):
        assert progress not in out


def panels(monkeypatch, run_dir, rows):
    """The figure plot_curves draws: its axes' titles and legend texts."""
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_curves(run_dir, rows, "title", "held-out masked-token accuracy")
    assert (run_dir / "loss_curve.png").stat().st_size > 0
    (figure,) = figures
    return {ax.get_title(): [t.get_text() for t in ax.get_legend().get_texts()]
            for ax in figure.axes}


ROWS = [{"step": 10, "loss": 5.0}, {"step": 20, "loss": 4.0},
        {"step": 20, "eval_loss": 4.5, "eval_accuracy": 0.3},
        {"step": 20, "fact_accuracy": 0.875, "everyday_accuracy": 0.5}]


def test_two_panels_each_curve_says_how_it_was_masked(tmp_path, monkeypatch):
    (tmp_path / "train_config.json").write_text(json.dumps({"masking": "salient",
                                                            "objective": "mlm"}))
    legends = panels(monkeypatch, tmp_path, ROWS)
    assert legends == {
        "losses": ["training loss (salient masking)", "held-out loss (token masking)"],
        "accuracies": ["held-out masked-token accuracy (token masking)",
                       "held-out fact questions (one [MASK]): 87.5%",
                       "everyday questions (one [MASK]): 50.0%"],
    }


def test_a_causal_run_is_not_said_to_mask(tmp_path, monkeypatch):
    (tmp_path / "train_config.json").write_text(json.dumps({"masking": "token",
                                                            "objective": "clm"}))
    legends = panels(monkeypatch, tmp_path, ROWS[:3])
    assert legends["losses"] == ["training loss (next token)", "held-out loss (next token)"]
