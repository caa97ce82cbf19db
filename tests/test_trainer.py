"""tinymlm.trainer with an objective written outside the package: the README's "Adding an
objective" example runs as printed, and its run resumes to the same bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The Python block of README.md's "Adding an objective" section."""
    section = (ROOT / "README.md").read_text().split("## Adding an objective", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_objective_trains_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)  # trains runs/sentences
    whole = tmp_path / "runs" / "sentences"
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert [r["step"] for r in rows if "eval_loss" in r] == [10, 20] and evals[1] < evals[0]

    trainer_type, objective = namespace["Trainer"], namespace["objective"]
    settings = namespace["settings"]
    resumed = tmp_path / "resumed"
    trainer_type(type(objective)(namespace["sentences"], objective.tokenizer), settings,
                 resumed, log=lambda message: None).fit(stop_after=7)
    trainer_type(type(objective)(namespace["sentences"], objective.tokenizer), settings,
                 resumed, log=lambda message: None).fit(resume=True)
    for name in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
