"""Semantic search: find the passages whose meaning is closest to a query.

    python -m tinymlm.search --model DIR --index notes.txt -- "where do foxes live?"
    python -m tinymlm.search --model DIR --index docs/*.txt --paragraphs --save-index docs.idx
    python -m tinymlm.search --model DIR --load-index docs.idx --top-k 3 --json "query" ...

``--index`` takes every file name that follows it, so queries go before it, after another
option, or after ``--``.

Every passage (a non-empty line, or with ``--paragraphs`` a block of lines between blank
lines) is encoded once by a ``SentenceEncoder`` into a unit vector; a query is encoded the
same way, and its score against a passage is the dot product of the two, their cosine
similarity. The search is exact: every passage is scored, with one matrix product per batch
of queries (on the encoder's device). That stays fast far beyond a learner's collection: a
million 384-dimensional passages are 1.5 GB of float32 and 2·N·H = 0.8 GFLOP per query, and a
batch of queries reads them once, in about the time a pass over 1.5 GB of memory takes. An
approximate index (FAISS) pays only past that size; it is not built in.

The index file (``--save-index``) is one safetensors file, written atomically: the (N, H)
float32 embeddings, and the passages with their source file and line as UTF-8 JSON bytes in
a uint8 tensor beside them, so the two always come from the same build. Nothing is pickled.

Output: for each query, the top-k passages, best first, as ``score  source:line  passage``
lines, or with ``--json`` one JSON array on stdout with, per query, a list of
``{"score", "passage", "source", "line"}``. Progress and messages go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tinymlm import backend, cli
from tinymlm.errors import UsageError
from tinymlm.fileio import atomic_write_bytes

COMMAND = "python -m tinymlm.search"
INDEX_FORMAT = "tinymlm-search-index-1"
QUERY_CHUNK = 256  # queries scored at a time: the score matrix is (N, QUERY_CHUNK)


@dataclass(frozen=True)
class Passage:
    text: str
    source: str  # the file it came from
    line: int  # the line (1-based) it starts on


@dataclass(frozen=True)
class Hit:
    score: float  # cosine similarity to the query
    passage: str
    source: str
    line: int


def split_passages(text: str, source: str, paragraphs: bool = False) -> list[Passage]:
    """The passages of a text: its non-empty lines, or its paragraphs (runs of non-empty
    lines, joined with spaces). Surrounding whitespace is dropped."""
    passages, block, start = [], [], 0
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not paragraphs:
            if line:
                passages.append(Passage(line, source, number))
        elif line:
            if not block:
                start = number
            block.append(line)
        elif block:
            passages.append(Passage(" ".join(block), source, start))
            block = []
    if block:
        passages.append(Passage(" ".join(block), source, start))
    return passages


def read_passages(paths, paragraphs: bool = False) -> list[Passage]:
    """The passages of every file, in order; a file that cannot be read as UTF-8 text, or a
    collection without a passage, is a UsageError."""
    passages = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UsageError(f"--index {path}: no such file; give text files, one passage "
                             "per line (or per paragraph with --paragraphs)")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--index {path} is not UTF-8 text ({e}); give text files") from e
        passages.extend(split_passages(text, str(path), paragraphs))
    if not passages:
        raise UsageError("--index: the files hold no passage (only blank lines); give text")
    return passages


class SearchIndex:
    """Passages and their unit-length embeddings (N, H) float32, searched exactly."""

    def __init__(self, embeddings: np.ndarray, passages: list[Passage], model: str = ""):
        if embeddings.ndim != 2 or len(embeddings) != len(passages):
            raise ValueError(f"{len(passages)} passages but embeddings of shape "
                             f"{embeddings.shape}")
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)  # (N, H)
        self.passages, self.model = passages, model

    def __len__(self) -> int:
        return len(self.passages)

    @property
    def dimension(self) -> int:
        return self.embeddings.shape[1]

    @classmethod
    def build(cls, encoder, passages: list[Passage], batch_size: int = 32,
              model: str = "") -> SearchIndex:
        embeddings = encoder.encode([p.text for p in passages], batch_size=batch_size)
        return cls(embeddings, passages, model)

    def search(self, encoder, queries: list[str], top_k: int = 5,
               batch_size: int = 32) -> list[list[Hit]]:
        """The ``top_k`` best passages of each query, best first (ties: the earlier passage)."""
        if encoder.dimension != self.dimension:
            raise ValueError(f"the model makes {encoder.dimension}-dimensional embeddings but "
                             f"the index holds {self.dimension}-dimensional ones")
        queries_emb = encoder.encode(queries, batch_size=batch_size)  # (Q, H)
        return [[Hit(float(s), self.passages[i].text, self.passages[i].source,
                     self.passages[i].line) for i, s in zip(rows, scores)]
                for rows, scores in top_k_rows(self.embeddings, queries_emb, top_k,
                                               encoder.device)]

    # --- the index file --------------------------------------------------------------------------

    def save(self, path) -> None:
        from safetensors.numpy import save

        passages = json.dumps([asdict(p) for p in self.passages], ensure_ascii=False)
        tensors = {"embeddings": self.embeddings,  # (N, H)
                   "passages_json": np.frombuffer(passages.encode("utf-8"), dtype=np.uint8)}
        atomic_write_bytes(path, save(tensors, metadata={"format": INDEX_FORMAT,
                                                         "model": self.model}))

    @classmethod
    def load(cls, path) -> SearchIndex:
        """Read an index file; a missing, damaged or foreign file is a ValueError."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such index file; build one with --index FILES "
                             "--save-index PATH")
        try:
            with safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                if metadata.get("format") != INDEX_FORMAT:
                    raise ValueError("not a tinymlm search index")
                embeddings = f.get_tensor("embeddings")
                records = json.loads(f.get_tensor("passages_json").tobytes().decode("utf-8"))
            passages = [Passage(r["text"], r["source"], int(r["line"])) for r in records]
            return cls(embeddings, passages, metadata.get("model", ""))
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a readable search index ({e}); build it again "
                             "with --index FILES --save-index PATH") from e


def top_k_rows(embeddings: np.ndarray, queries: np.ndarray, top_k: int, device: str = "cpu"):
    """For each query row, the indices and scores of its ``top_k`` best rows of
    ``embeddings`` by dot product, best first, ties to the earlier row: (Q,) pairs of arrays.
    The products run on ``device``."""
    index = backend.to_device(embeddings, device)  # (N, H)
    results = []
    for start in range(0, len(queries), QUERY_CHUNK):
        chunk = backend.to_device(queries[start : start + QUERY_CHUNK], device)  # (q, H)
        scores = backend.to_numpy(index @ chunk.T).T  # (q, N)
        for row in scores:  # (N,)
            best = np.argsort(-row, kind="stable")[:top_k]  # stable: ties keep their order
            results.append((best, row[best]))
    return results


# --- the command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, like every other bad input
        raise UsageError(f"{message} (see {COMMAND} --help)")


def parse_args(argv) -> argparse.Namespace:
    p = _Parser(prog=COMMAND, description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True,
                   help="a sentence encoder folder (sentence-transformers' layout, or any "
                        "BERT model folder: mean pooling)")
    p.add_argument("--index", nargs="+", metavar="DOCS", help="text files to search")
    p.add_argument("--paragraphs", action="store_true",
                   help="one passage per blank-line-separated paragraph (default: per line)")
    p.add_argument("--save-index", metavar="PATH", help="write the index built from --index")
    p.add_argument("--load-index", metavar="PATH", help="search an index saved before")
    p.add_argument("--top-k", type=int, default=5, help="passages per query (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="texts encoded at a time")
    p.add_argument("--json", action="store_true", help="print one JSON array on stdout")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("queries", nargs="*", help="what to look for")
    return p.parse_args(argv)


def check_args(args) -> None:
    if (args.index is None) == (args.load_index is None):
        raise UsageError("give either --index DOCS... (build an index) or --load-index PATH")
    if args.load_index is not None and (args.save_index or args.paragraphs):
        raise UsageError("--save-index and --paragraphs go with --index: a loaded index is "
                         "searched as it was built")
    if args.top_k < 1 or args.batch_size < 1:
        raise UsageError("--top-k and --batch-size must be positive integers")
    missing = [path for path in args.index or () if not Path(path).is_file()]
    if missing and not args.queries:  # the queries may have joined the list of files
        raise UsageError(f"--index: {missing[0]!r} is not a file; a query after the files "
                         'needs -- before it: --index DOCS... -- "query"')
    if any(not q.strip() for q in args.queries):
        raise UsageError("a query is empty: give some words to search for")
    if not args.queries and not args.save_index:
        raise UsageError('no query: give one or more, e.g. "where do foxes live?" (or '
                         "--save-index PATH to only build the index)")
    if args.save_index and Path(args.save_index).is_dir():
        raise UsageError(f"--save-index {args.save_index} is a folder; give a file name")


def load_encoder(folder: str, device: str):
    from tinymlm.checkpoint import CheckpointError
    from tinymlm.sentence_encoder import SentenceEncoder

    try:
        return SentenceEncoder.from_pretrained(folder, device=device)
    except CheckpointError as e:
        raise UsageError(f"--model: {e}") from e


def print_results(queries: list[str], results: list[list[Hit]], as_json: bool) -> None:
    if as_json:
        print(json.dumps([[asdict(h) for h in hits] for hits in results], ensure_ascii=False))
        return
    for query, hits in zip(queries, results):
        print(f"query: {query}")
        for rank, h in enumerate(hits, 1):
            print(f"{rank:3d}. {h.score:.4f}  {h.source}:{h.line}  {h.passage}")


def run(args) -> None:
    check_args(args)
    device = cli.check_device(args.device)
    if args.load_index:
        try:
            index = SearchIndex.load(args.load_index)
        except ValueError as e:
            raise UsageError(f"--load-index: {e}") from e
        encoder = load_encoder(args.model, device)
        if index.model and Path(index.model).resolve() != Path(args.model).resolve():
            cli.log(f"note: the index was built with {index.model}, the queries use "
                    f"{args.model}")
    else:
        passages = read_passages(args.index, args.paragraphs)
        encoder = load_encoder(args.model, device)
        cli.log(f"encoding {len(passages)} passages from {len(args.index)} file(s)")
        index = SearchIndex.build(encoder, passages, args.batch_size, model=args.model)
        if args.save_index:
            index.save(args.save_index)
            cli.log(f"saved the index of {len(index)} passages in {args.save_index}")
    if not args.queries:
        return
    try:
        results = index.search(encoder, args.queries, args.top_k, args.batch_size)
    except ValueError as e:
        raise UsageError(f"--model {args.model} does not fit the index: {e}") from e
    print_results(args.queries, results, args.json)


def main(argv=None) -> int:
    return cli.run_command(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
