"""Write the lesson notebooks from the cells below: ``python notebooks/build_notebooks.py``.

The lessons are kept here as Python strings so that a change is an ordinary diff and every
notebook is regenerated the same way. The notebooks are written without outputs; run them with
``jupyter lab``, ``jupyter nbconvert --execute --to notebook --inplace notebooks/NN_*.ipynb``
or ``pytest tests/test_lessons.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the lessons, and tinymlm from this checkout

from lessons import LESSONS  # noqa: E402  (the cells, one module per lesson)

from tinymlm.fileio import atomic_write_text  # noqa: E402


def notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in cells:
        source = source.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(source))
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating gives the same bytes
        cell["id"] = f"cell-{i:03d}"
    return nb


def main() -> None:
    for name, cells in LESSONS.items():
        path = HERE / f"{name}.ipynb"
        nbformat.validate(nb := notebook(cells))
        text = nbformat.writes(nb) + "\n"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
            print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
