"""Data for masked language modeling: corpora, packing into sequences, and masking.

* ``tinyworld``: the built-in corpus, a seeded generator of true facts in English, with
  held-out phrasings and fact probes to measure what a model knows.
* ``text``: real text from UTF-8 files and folders, Python's own docs, Hugging Face datasets.
* ``packing``: documents -> fixed-length [CLS] ... [SEP] sequences (RoBERTa's full-sentence
  packing), and a seeded train/eval split.
* ``masking``: ``MLMCollator``, dynamic masking with the 80/10/10 rule.
"""

from tinymlm.data import tinyworld
from tinymlm.data.masking import STRATEGIES, MLMCollator, choose_spans, span_length_distribution
from tinymlm.data.packing import encode_documents, pack_documents, train_eval_split
from tinymlm.data.text import (
    load_hf_dataset,
    load_text_corpus,
    python_docs_corpus,
    read_text_file,
    split_documents,
)

__all__ = [
    "MLMCollator",
    "STRATEGIES",
    "choose_spans",
    "encode_documents",
    "load_hf_dataset",
    "load_text_corpus",
    "pack_documents",
    "python_docs_corpus",
    "read_text_file",
    "span_length_distribution",
    "split_documents",
    "tinyworld",
    "train_eval_split",
]
