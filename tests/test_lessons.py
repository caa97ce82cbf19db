"""Run every lesson notebook top to bottom (issue 9): each lesson's asserts check its claims.

Each notebook runs in a fresh "python3" kernel (ipykernel) with notebooks/ as the working
directory, exactly as a learner runs it. A cell that raises (an assert whose claim turned out
false, an error) fails the test with the cell's traceback. The optional peers (transformers,
the all-MiniLM-L6-v2 wheel, a GPU) are used by the lessons when present; without them the
cells that need them print a note and move on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 300  # the longest cell is lesson 5's training loop


def test_every_lesson_is_collected():
    numbers = [p.name[:2] for p in LESSONS]
    assert numbers == ["01", "02", "03", "04", "05", "06", "07"], numbers


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_top_to_bottom(path, monkeypatch):
    why = "needs the lessons extra: pip install -e '.[lessons]'"
    nbformat = pytest.importorskip("nbformat", reason=why)
    nbclient = pytest.importorskip("nbclient", reason=why)
    pytest.importorskip("ipykernel", reason=why)
    pytest.importorskip("matplotlib")

    # The kernel imports tinymlm from this checkout even when it is not pip-installed, and
    # draws its plots without a display.
    pythonpath = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), pythonpath) if p))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # One BLAS thread: the lessons' matrices are small, and on a busy machine OpenBLAS's
    # spinning worker threads made lesson 5's training six times slower (measured).
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, "1"))

    nb = nbformat.read(path, as_version=4)
    assert all(c.get("outputs", []) == [] for c in nb.cells if c.cell_type == "code"), (
        f"{path.name} is committed with outputs: regenerate it with notebooks/build_notebooks.py"
    )
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    print(f"{path.name}: {elapsed:.1f} s")


def test_notebooks_match_their_source():
    """The committed .ipynb files are exactly what build_notebooks.py writes (nothing stale)."""
    pytest.importorskip("nbformat")
    script = (
        "import sys; sys.path.insert(0, 'notebooks'); import build_notebooks as b\n"
        "import nbformat\n"
        "for name, cells in b.LESSONS.items():\n"
        "    text = nbformat.writes(b.notebook(cells)) + '\\n'\n"
        "    path = b.HERE / f'{name}.ipynb'\n"
        "    if path.read_text(encoding='utf-8') != text:\n"
        "        print(name); sys.exit(1)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, (
        f"notebook {done.stdout.strip()} differs from notebooks/lessons/: run "
        f"python notebooks/build_notebooks.py ({done.stderr[-500:]})"
    )
