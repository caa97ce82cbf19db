"""The import picture is a stack: engine <- layers <- objectives <- trainer <- command lines,
and data and the tokenizer need no autograd. Read from the modules' import statements (the
lazy ones inside functions too), so a shortcut that bends the stack fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tinymlm"

ENGINE = ("tinymlm.autograd", "tinymlm.ops", "tinymlm.nn", "tinymlm.gradcheck")
COMMAND_LINES = ("tinymlm.train", "tinymlm.finetune", "tinymlm.cli")
# fill_mask is a library function first (the fact probes ask it) and a command line second
ABOVE_LAYERS = ("tinymlm.objectives", "tinymlm.trainer", "tinymlm.fill_mask", *COMMAND_LINES)

# files (globs under tinymlm/) and the modules they must not import
FORBIDDEN = {
    "data/*.py": ENGINE + ABOVE_LAYERS,
    "tokenizer.py": ENGINE + ABOVE_LAYERS,
    "wordpiece_trainer.py": ENGINE + ABOVE_LAYERS,
    "metrics.py": ENGINE + ABOVE_LAYERS,
    "nn/*.py": ABOVE_LAYERS,
    "objectives/*.py": ("tinymlm.trainer", *COMMAND_LINES),
    "trainer.py": ("tinymlm.objectives", *COMMAND_LINES),  # the loop knows no objective
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # from tinymlm import nn
    return names


@pytest.mark.parametrize("pattern", FORBIDDEN)
def test_each_layer_imports_only_what_is_below_it(pattern):
    files = sorted(PACKAGE.glob(pattern))
    assert files, pattern
    for path in files:
        bad = sorted(m for m in imported_modules(path)
                     if any(m == f or m.startswith(f + ".") for f in FORBIDDEN[pattern]))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
