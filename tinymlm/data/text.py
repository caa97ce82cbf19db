"""Real text: UTF-8 files and folders on disk, Hugging Face ``datasets`` corpora, Python's docs.

A corpus is a list of documents (strings). On disk:

* a **file** (any name) is read as UTF-8 text and split into documents at blank lines;
* a **folder** is searched recursively for ``*.txt`` files (hidden files and folders are
  skipped), read in sorted path order, each split at blank lines the same way.

Lines inside a document are joined with single spaces (the tokenizer treats a line break as a
space anyway). Problems are reported with the path and what to do: a missing path raises
``FileNotFoundError``; a file that is not UTF-8 text (undecodable bytes, NUL bytes), an empty
file named directly, a folder without ``.txt`` files, and a corpus with no text at all raise
``ValueError``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


def split_documents(text: str) -> list[str]:
    """Documents of a text: paragraphs separated by one or more blank lines, lines joined."""
    paragraphs = _BLANK_LINES.split(text.replace("\r\n", "\n"))
    return [" ".join(p.split()) for p in paragraphs if p.strip()]


def read_text_file(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped); ValueError if it is not text."""
    path = Path(path)
    data = path.read_bytes()
    if b"\x00" in data:
        raise ValueError(f"{path} is not a text file (it holds NUL bytes): give UTF-8 text files")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {error.start} cannot be decoded): "
            "convert it to UTF-8, e.g. `iconv -t UTF-8`"
        ) from None


def _text_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(root) / n for n in names if n.endswith(".txt") and not n.startswith(".")]
    return sorted(files)


def load_text_corpus(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Documents of the UTF-8 files and folders in ``paths`` (see the module docstring)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no corpus path given: name UTF-8 text files or folders of .txt files")
    documents: list[str] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"corpus path {path} does not exist")
        if path.is_dir():
            files = _text_files(path)
            if not files:
                raise ValueError(f"corpus folder {path} holds no .txt files")
            for file in files:
                documents += split_documents(read_text_file(file))
        else:
            found = split_documents(read_text_file(path))
            if not found:
                raise ValueError(f"corpus file {path} is empty: give a file with text in it")
            documents += found
    if not documents:
        names = ", ".join(str(p) for p in paths)
        raise ValueError(f"corpus {names} is empty: its .txt files hold no text")
    return documents


def python_docs_corpus() -> list[str]:
    """Real English prose that ships with every Python: the topics of ``help()``.

    ``pydoc_data.topics`` holds the language reference sections (about 65,000 words); each
    paragraph becomes a document. Useful offline, for tests and small experiments.
    """
    from pydoc_data.topics import topics

    return [doc for key in sorted(topics) for doc in split_documents(topics[key])]


def load_hf_dataset(
    name: str,
    config: str | None = None,
    split: str = "train",
    text_field: str = "text",
    **load_kwargs,
) -> list[str]:
    """Documents of a Hugging Face ``datasets`` corpus, e.g. ("wikitext", "wikitext-103-raw-v1").

    Needs ``pip install datasets`` (and network for hub datasets). Every non-empty row's
    ``text_field`` is one document (wikitext stores one paragraph or heading per row).
    ``load_kwargs`` go to ``datasets.load_dataset``, e.g.
    ``load_hf_dataset("text", data_files="corpus.txt")`` reads a local file.
    """
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "load_hf_dataset needs the `datasets` library: pip install datasets "
            "(or save the text to files and pass their paths to load_text_corpus)"
        ) from None
    dataset = datasets.load_dataset(name, config, split=split, **load_kwargs)
    columns = getattr(dataset, "column_names", None)
    if columns is not None and text_field not in columns:
        raise ValueError(f"dataset {name!r} has no field {text_field!r}; its fields: {columns}")
    documents = [" ".join(row[text_field].split()) for row in dataset]
    documents = [doc for doc in documents if doc]
    if not documents:
        raise ValueError(f"dataset {name!r} (split {split!r}) holds no text in {text_field!r}")
    return documents
